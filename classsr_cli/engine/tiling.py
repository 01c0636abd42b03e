"""The sub-image grid: 32x32 LR tiles at stride 28 that cover the whole image, and their stitching.

Unlike the official code, the last row and column of tiles are aligned to the image edge, so the right
and bottom remainder is never dropped. Overlaps are averaged uniformly (the paper's way); on a grid-aligned
image this is exactly the official result. Because every tile has weight 1, the number of tiles covering
an output pixel is a product of a row count and a column count, so only 1-D counts are kept.
"""

import numpy as np

PATCH = 32
STRIDE = 28


def tile_starts(length: int, patch: int = PATCH, stride: int = STRIDE) -> list[int]:
    """Start offsets along one axis: every `stride`, plus one aligned to the end if the grid falls short."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def coverage(length: int, starts: list[int], patch: int) -> np.ndarray:
    """How many tiles cover each position of an axis of `length` (all positions covered at least once)."""
    counts = np.zeros(length, dtype=np.float32)
    for start in starts:
        counts[start : start + patch] += 1
    return counts


def padded_size(length: int, patch: int = PATCH) -> int:
    """Images smaller than a tile are padded (mirrored, edge pixel repeated) up to one tile."""
    return max(length, patch)


def pad_to_tile(array: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Mirror-pad an (H, W, C) array on the bottom/right so both sides are at least `patch`."""
    pad_h = max(0, patch - array.shape[0])
    pad_w = max(0, patch - array.shape[1])
    if not pad_h and not pad_w:
        return array
    return np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")  # as the engine mirrors
