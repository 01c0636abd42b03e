"""What slimmable training reads: its batches (`BatchSource`; `PreparedPairs`, a prepared folder through the
project's loader) and its validation crops (`central_crops`: the central squares of the validation photos,
with their PSNR for a network, `crop_psnrs`, and for bicubic, `bicubic_psnrs`).

Photos held on a GPU are another batch source, `train.device_data.DevicePhotos`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


@dataclass
class ValCrops:
    """Central crops of validation photos: LR float32 (h, w, 3) in [0, 1] and HR uint8 (4h, 4w, 3)."""

    names: list[str]
    lr: list[np.ndarray]
    hr: list[np.ndarray]
    reference: dict[str, list[float]] = field(default_factory=dict)  # row name -> PSNR per crop


def central_square(image: np.ndarray, side: int, scale: int = 4) -> np.ndarray:
    """The central square of (H, W, C) `image`, `side` pixels or less (a multiple of `scale`, within it)."""
    height, width = image.shape[:2]
    crop = min(side, height - height % scale, width - width % scale)
    top, left = (height - crop) // 2, (width - crop) // 2
    return np.ascontiguousarray(image[top : top + crop, left : left + crop])


def central_crops(
    photos: list[Path],
    lr_size: int,
    scale: int = 4,
    read: Callable[[Path], np.ndarray] | None = None,
) -> ValCrops:
    """The central (scale x lr_size)-pixel square of each photo as HR, and its MATLAB-bicubic LR (8-bit).

    `read` gives a photo as (H, W, 3) uint8 RGB (default: the project's reader, `imaging.photos.read_rgb8`,
    which needs pyvips); a photo that is already such a square (as `benchmarks/gpu_prepare.py` writes them)
    gives the same crop as its original."""
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8

    if read is None:
        from classsr_cli.imaging.photos import read_rgb8 as read

    names, lrs, hrs = [], [], []
    for path in photos:
        hr = central_square(read(path), lr_size * scale, scale)
        lr = matlab_uint8(imresize(hr.astype(np.float32), 1 / scale))
        names.append(path.name)
        lrs.append(lr.astype(np.float32) / 255.0)
        hrs.append(hr)
    return ValCrops(names, lrs, hrs)


@torch.no_grad()
def crop_psnrs(
    network: Callable[[torch.Tensor], torch.Tensor], crops: ValCrops, device: torch.device
) -> list:
    """RGB PSNR (dB, 8-bit output, `scale`-pixel border) of `network` run whole on each LR crop."""
    from classsr_cli.metrics import psnr
    from classsr_cli.pixels import unit_to_uint8

    values = []
    for lr, hr in zip(crops.lr, crops.hr, strict=True):
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].to(device)
        sr = network(x)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        values.append(round(psnr(unit_to_uint8(sr), hr, border=4), 4))
    return values


def bicubic_psnrs(crops: ValCrops) -> list:
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8
    from classsr_cli.metrics import psnr

    return [
        round(psnr(matlab_uint8(imresize(lr * 255.0, 4)), hr, border=4), 4)
        for lr, hr in zip(crops.lr, crops.hr, strict=True)
    ]


class BatchSource(Protocol):
    """Where the training loop takes its batches from.

    `patch`: the LR side of the batches it gives. `batches(batch_size, seed, start)`: endless (LR, HR)
    pairs, float32 (B, 3, patch, patch) and (B, 3, 4 patch, 4 patch) in [0, 1], flipped and rotated; batch
    k (0-based) of a run is a function of (seed, start + k), so a run resumed at step `start` continues the
    sequence. They may live on the CPU (the loop moves them) or on the training device already.
    """

    patch: int

    def batches(
        self, batch_size: int, seed: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class PreparedPairs:
    """The training sub-images of a prepared folder (`classsr prepare-data`, every class) through the
    project's loader (`train.data.make_loader`: the order and flips are a function of the seed and the
    sample's position; on a GPU where they fit, gathered there). Raises DataError for a folder with none."""

    def __init__(self, root: Path, device: torch.device | str = "cpu"):
        from classsr_cli.train.data import open_train_set

        self.device = torch.device(device)
        # the dataset adds no flips of its own (the loader's sampler draws them), so its seed is unused
        self.dataset = open_train_set(Path(root), None, 0)
        self.patch = self.dataset.patch

    def batches(
        self, batch_size: int, seed: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from classsr_cli.train.data import make_loader

        loader = make_loader(self.dataset, batch_size, seed, 0, 1, start * batch_size, 0, self.device)
        for low_res, high_res, _ in loader:
            yield low_res, high_res
