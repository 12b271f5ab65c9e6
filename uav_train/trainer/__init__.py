"""Training, as settings of one loop: the run's settings (config.py), the one loss (losses.py), the adapter's start
from the data (warm_start.py) and the loop over stages with its checkpoints (loop.py). The names callers use are
importable from here."""

from uav_train.trainer.config import RECIPE_SECTIONS, LoraSettings, TrainConfig
from uav_train.trainer.losses import answer_loss, answer_losses
from uav_train.trainer.loop import Trainer, open_stores, train

__all__ = ["RECIPE_SECTIONS", "LoraSettings", "TrainConfig", "Trainer", "answer_loss", "answer_losses", "open_stores",
           "train"]
