"""Additive white Gaussian noise, the degradation the denoisers are trained and measured on (DnCNN, 4.4).

Noise is drawn on the 0-255 scale (sigma 25 is DnCNN's standard setting) and the noisy image is rounded and
clipped to 8 bits, as a noisy photo stored in a file would be. torch loads on first use: prepare-data
reads the default sigma without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_NOISE_SIGMA = 25.0  # DnCNN's standard setting, on the 0-255 scale: prepare-data's and bench's default


def add_noise(clean: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """clean (any shape) in [0, 1] -> clean + N(0, sigma / 255), rounded to 1/255 steps and clipped to [0, 1].

    `generator` (on clean's device) makes the noise reproducible; None draws from torch's global generator.
    """
    import torch

    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=torch.float32)
    noisy = clean.float() * 255.0 + float(sigma) * noise
    return (noisy.round_().clamp_(0, 255) / 255.0).to(clean.dtype)


def noisy_image(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """An 8-bit (H, W, C) image plus seeded Gaussian noise -> float32 (H, W, C) in [0, 1] on 1/255 steps.

    The same (image size, sigma, seed) always gives the same noise: benchmarks and validation are repeatable.
    """
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32) / 255.0)
    return add_noise(tensor, sigma, torch.Generator().manual_seed(int(seed))).numpy()
