"""Image quality metrics as SR papers compute them: PSNR on RGB or on the Y channel, with a border crop.

Arrays are (H, W, C) RGB. uint8 arrays are read as 0-255; float arrays follow the project's convention
of [0, 1] and are scaled to 0-255, so the two kinds compare directly (`pixels.unit_to_uint8` makes
the 8-bit samples a saved file holds).
"""

import math

import numpy as np


def _as_255(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float64)
    return image.astype(np.float64) * 255.0


def _crop(image: np.ndarray, border: int) -> np.ndarray:
    return image[border:-border, border:-border] if border > 0 else image


def _psnr_255(a: np.ndarray, b: np.ndarray, border: int, max_value: float) -> float:
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs images of one shape, got {a.shape} and {b.shape}")
    a, b = _crop(a, border), _crop(b, border)
    if a.size == 0:
        raise ValueError(f"border {border} leaves nothing of a {a.shape} image")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(max_value**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray, border: int = 4, max_value: float = 255.0) -> float:
    """PSNR in dB over all RGB channels, `border` pixels cropped from each side (the scale, for x4 SR)."""
    return _psnr_255(_as_255(a), _as_255(b), border, max_value)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """The Y of YCbCr (BT.601, studio range 16-235) in 0-255, as MATLAB's rgb2ycbcr computes it."""
    rgb = _as_255(image) / 255.0
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def psnr_y(a: np.ndarray, b: np.ndarray, border: int = 4, max_value: float = 255.0) -> float:
    """PSNR in dB on the Y channel (BT.601), `border` pixels cropped from each side."""
    return _psnr_255(rgb_to_y(a), rgb_to_y(b), border, max_value)


def psnr_per_subimage(sr, hr, cap: float = 100.0):
    """PSNR in dB of each of N sub-images: (N, C, H, W) float tensors holding 8-bit values; capped at `cap`
    so that flat sub-images (zero error) rank first instead of being infinite."""
    import torch

    # float32 is exact for the squared 8-bit differences; the norm's blocked summation keeps the mean accurate
    squared_norm = torch.linalg.vector_norm((sr - hr).flatten(1), dim=1).double() ** 2
    mse = squared_norm / sr[0].numel()
    psnr = 10 * torch.log10(255.0**2 / mse.clamp_min(1e-300))
    return psnr.clamp(max=cap).float().numpy()
