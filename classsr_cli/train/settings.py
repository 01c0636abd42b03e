"""A training stage's settings and what they decide: the schedule, the forward pass's precision, the seeds,
the loader's workers and a denoising stage's noise.

`Settings` is resolved once per stage (`resolve_settings`: the command line, else the checkpoint, else the
stage's defaults) and recorded in every checkpoint, so that a resumed run trains as the one it continues.
"""

import math
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classsr_cli.engine.ranks import usable_cores
from classsr_cli.errors import ModelError
from classsr_cli.train.losses import LossWeights

PRECISIONS = ("auto", "fp32", "bf16")  # of the forward pass (training_autocast)


@dataclass
class Settings:
    """The resolved settings of one stage (options given on the command line, else the checkpoint's, else
    the stage's defaults)."""

    iters: int
    batch_size: int  # global: split evenly across processes
    lr: float
    seed: int = 0
    min_lr: float = 1e-7
    loss_weights: LossWeights = field(default_factory=LossWeights)
    val_every: int = 5000  # 0: validate at the end only
    val_crop: int | None = 192
    val_batch_size: int | None = None
    checkpoint_minutes: float = 5.0
    log_every: int = 100
    workers: int | None = None  # None: chosen for the device
    channels_last: bool = True  # NHWC: 1.3-2x faster training steps on a CPU too (narrow CARN branches most)
    precision: str = "auto"  # of the forward pass: auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16
    noise_sigma: float | None = None  # denoising data: Gaussian noise (0-255 scale); None: the data's sigma
    # denoising: the share of each batch left clean (target = input), so that a denoiser given a clean area
    # leaves it as it is instead of "removing" noise that is not there (a tint on flat colours otherwise)
    clean_fraction: float = 0.0
    # the share of each batch replaced by synthetic smooth fields (`train/smooth.py`): smooth input should
    # come back smooth, without the faint pattern of the scale's period that photos alone leave
    smooth_fraction: float = 0.0
    # stages 2 and 3: the Class-Module's first-layer kernels kept zero-mean (after every update,
    # `ClassModule.center_input_filters_`), so that it routes by detail, not brightness; False: the paper's
    zero_mean_filters: bool = False

    def to_record(self) -> dict:
        record = asdict(self)
        record["loss_weights"] = asdict(self.loss_weights)
        return record


def resolve_settings(options: dict, checkpoint: dict | None, defaults: dict) -> Settings:
    """Each setting from the command line when given (not None), else from the checkpoint, else the default.

    Loss weights come as options w_image, w_classes, w_average, w_labels and w_cost, each resolved on
    its own.
    """
    saved = dict(checkpoint.get("options", {})) if checkpoint else {}
    values = {}
    for name in Settings.__dataclass_fields__:
        if name == "loss_weights":
            continue
        for source in (options, saved, defaults):
            if source.get(name) is not None:
                values[name] = source[name]
                break
    saved_weights = saved.get("loss_weights") or {}
    weights = {}
    for name in LossWeights.__dataclass_fields__:
        for value in (options.get(f"w_{name}"), saved_weights.get(name), defaults.get(f"w_{name}")):
            if value is not None:
                weights[name] = float(value)
                break
    if values.get("precision", "auto") not in PRECISIONS:
        raise ModelError(f"unknown --precision '{values['precision']}': use {', '.join(PRECISIONS)}")
    return Settings(**values, loss_weights=LossWeights(**weights))


def stage_noise_sigma(model: nn.Module, settings: Settings, data_root: Path) -> float | None:
    """The Gaussian noise a denoising stage adds to its inputs (0-255 scale); None for upscaling data.

    Refuses data prepared for another task or scale than the model's."""
    from classsr_cli.data.dataset import input_noise

    data_sigma = input_noise(data_root, getattr(model, "scale", 4))
    if data_sigma is None:
        for option, value in (
            ("--noise-sigma", settings.noise_sigma),
            ("--clean-fraction", settings.clean_fraction),
        ):
            if value:
                raise ModelError(f"{option} is for denoising data; {data_root} was prepared for upscaling")
        return None
    sigma = settings.noise_sigma if settings.noise_sigma is not None else data_sigma
    if not sigma or not 0 < float(sigma) <= 255:
        raise ModelError(f"--noise-sigma must lie in (0, 255] (0-255 scale), got {sigma}")
    return float(sigma)


def training_autocast(precision: str, device: torch.device):
    """The forward pass's autocast: bf16 keeps fp32's range, so no loss scaling is needed. A CPU gets bf16
    only on request: it nearly halved CARN's step time on a CPU with bf16 instructions, untried elsewhere."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def cosine_lr(iteration: int, settings: Settings) -> float:
    """The learning rate of 0-based step `iteration`: cosine from lr down to min_lr over the run."""
    return cosine_at(min(iteration, settings.iters) / max(1, settings.iters), settings.lr, settings.min_lr)


def cosine_at(progress: float, lr: float, min_lr: float) -> float:
    """The cosine schedule at `progress` (0 = start, 1 = end, clipped to that range): lr down to min_lr."""
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers(device: torch.device, local_world: int) -> int:
    per_process = max(1, usable_cores() // max(1, local_world))
    if device.type == "cuda":
        return min(8, max(1, per_process - 1))
    # on a CPU the loader's worker competes with the training threads: only worth it with cores to spare
    return 1 if per_process > 2 else 0
