"""``python -m uav_train.trainer`` (and ``torchrun --nproc-per-node N -m uav_train.trainer``): the options of
`uav train`, run as every uav entry point runs (one-line errors, exit codes)."""

from uav_cache.cli import run_cli
from uav_train.cli import train_command

run_cli(train_command, "python -m uav_train.trainer")
