"""Validation during training: held-out photos through the inference engine, PSNR as the paper reports it."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classsr_cli.metrics import psnr, psnr_y
from classsr_cli.pixels import unit_to_uint8


@dataclass
class ValPhoto:
    name: str
    lr: np.ndarray  # float32 (h, w, 3) in [0, 1]
    hr: np.ndarray  # uint8 (4h, 4w, 3)


def central_crop(lr: np.ndarray, hr: np.ndarray, size: int, scale: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The central size x size LR pixels and the HR pixels they map to (the whole photo if smaller)."""
    height, width = lr.shape[:2]
    crop_h, crop_w = min(size, height), min(size, width)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    lr = lr[top : top + crop_h, left : left + crop_w]
    hr = hr[top * scale : (top + crop_h) * scale, left * scale : (left + crop_w) * scale]
    return lr, hr


def load_val_photos(
    root: Path, crop: int | None, scale: int = 4, noise_sigma: float | None = None
) -> list[ValPhoto]:
    """The prepared held-out photos, cut to their central `crop` LR pixels (None or 0: whole photos).

    With `noise_sigma` (denoising, scale 1) the input is the clean photo plus seeded Gaussian noise of that
    sigma (0-255 scale), the same at every validation.
    """
    from classsr_cli.data.dataset import val_images
    from classsr_cli.data.noise import noisy_image

    photos = []
    for seed, (name, hr_path, lr_path) in enumerate(val_images(root)):
        lr, hr = np.load(lr_path, mmap_mode="r"), np.load(hr_path, mmap_mode="r")  # only the crop is read
        if crop:
            lr, hr = central_crop(lr, hr, crop, scale)
        hr = hr[: lr.shape[0] * scale, : lr.shape[1] * scale]  # HR may be a few pixels larger than 4x LR
        if noise_sigma:
            inputs = noisy_image(lr, noise_sigma, seed)
        else:
            inputs = np.ascontiguousarray(lr, dtype=np.float32) / 255.0
        photos.append(ValPhoto(name, inputs, np.ascontiguousarray(hr)))
    return photos


def validate(
    model: nn.Module, photos: list[ValPhoto], device: torch.device, batch_size: int | None = None
) -> dict:
    """Mean PSNR (RGB and Y, border = the scale for SR, none for denoising, on 8-bit output), FLOPs ratio
    and class fractions over the photos."""
    from classsr_cli.engine import Upscaler

    if not photos:
        return {}
    engine = Upscaler(model, device=str(device), batch_size=batch_size)  # it runs a copy: ours keeps training
    tally = engine.new_tally()  # routing totalled over all photos
    rgb, luma = [], []
    border = engine.scale if engine.scale > 1 else 0  # as bench: SR crops the scale, denoising nothing
    for photo in photos:
        sr, _ = engine.upscale_array(photo.lr, tally=tally)
        sr = unit_to_uint8(sr)
        rgb.append(psnr(sr, photo.hr, border=border))
        luma.append(psnr_y(sr, photo.hr, border=border))
    return {
        "psnr": float(np.mean(rgb)),
        "psnr_y": float(np.mean(luma)),
        "flops_ratio": tally.flops_ratio(engine.plan),
        "class_fractions": [round(share, 4) for share in tally.fractions()],
        "photos": len(photos),
    }
