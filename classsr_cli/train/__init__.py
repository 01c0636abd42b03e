"""Training: the ClassSR losses, the three stages, checkpoints and distributed set-up."""

from classsr_cli.train.losses import LossWeights, average_loss, class_loss, classsr_loss, image_loss
from classsr_cli.train.stages import (
    TrainRequest,
    assemble_branches,
    assemble_networks,
    average_snapshots,
    train_branches,
    train_classifier,
    train_joint,
)

__all__ = [
    "LossWeights",
    "TrainRequest",
    "assemble_branches",
    "assemble_networks",
    "average_snapshots",
    "average_loss",
    "class_loss",
    "classsr_loss",
    "image_loss",
    "train_branches",
    "train_classifier",
    "train_joint",
]
