"""Shared helpers of the benchmark scripts: models to measure and test pictures."""

from pathlib import Path

import numpy as np
import torch

from classsr_cli.imaging import read_image
from classsr_cli.models import create
from classsr_cli.weights import load_weights, shipped_entry

SAMPLE = Path(__file__).resolve().parent.parent / "classsr_cli" / "samples" / "picos-de-europa.png"


def classsr_model(family: str):
    """(model, label): the shipped ClassSR weights of a family, else random weights (timing is the same)."""
    if shipped_entry(family, "classsr"):
        return load_weights(family, kind="classsr").model, "shipped weights"
    torch.manual_seed(0)
    return create(family).eval(), "random weights"


def sample_lr(path: Path = SAMPLE) -> np.ndarray:
    return read_image(path)[:, :, :3]


def smooth_picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like test picture of any size: smooth random colours plus fine noise, float32 in [0, 1]."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 16 + 2, width // 16 + 2, 3), dtype=np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)
