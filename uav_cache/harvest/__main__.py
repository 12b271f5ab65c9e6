"""``python -m uav_cache.harvest`` (and ``torchrun --nproc-per-node N -m uav_cache.harvest``): the options of
`uav harvest`, run as every uav entry point runs (one-line errors, exit codes)."""

from uav_cache.cli import harvest_command, run_cli

run_cli(harvest_command, "python -m uav_cache.harvest")
