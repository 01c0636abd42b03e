"""A picture of the routing, like Fig. 1 of the paper: the image tinted by the class of each tile."""

from pathlib import Path

import numpy as np
import pyvips

from classsr_cli.imaging.writer import write_image

# Long side of the class map: a map of an 8K image needs no more to be read.
MAP_LONG_SIDE = 2048
TINT = 0.45  # share of the class colour in each pixel


def class_colours(num_classes: int) -> np.ndarray:
    """Green (simple) through yellow to red (hard), as RGB in [0, 1]."""
    hues = np.linspace(1 / 3, 0.0, num_classes)  # green -> red on the HSV circle
    return np.stack([_hsv_to_rgb(h) for h in hues])


def _hsv_to_rgb(hue: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return 1 - np.clip(np.minimum(k, 4 - k), 0, 1)


def write_class_map(
    source: Path,
    target: Path,
    classes: np.ndarray,
    row_starts: list[int],
    col_starts: list[int],
    num_classes: int,
    overwrite: bool = False,
) -> None:
    """Write `target`: a downsized copy of `source` tinted by `classes` (tile rows x tile columns)."""
    image = pyvips.Image.thumbnail(str(source), MAP_LONG_SIDE, size="down")
    full = pyvips.Image.new_from_file(str(source))
    if full.get_typeof("orientation") and full.get("orientation") in (5, 6, 7, 8):
        full_w, full_h = full.height, full.width  # thumbnail autorotates; match its axes
    else:
        full_w, full_h = full.width, full.height
    image = image.colourspace("srgb") if image.interpretation != "srgb" else image
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    image = image.cast("uchar") if image.format != "uchar" else image
    pixels = np.ndarray(
        buffer=image.write_to_memory(), dtype=np.uint8, shape=(image.height, image.width, image.bands)
    )
    pixels = pixels[:, :, :3].astype(np.float32) / 255.0
    # each map pixel takes the class of the last tile starting at or before it (tiles overlap by 4 pixels)
    ys = (np.arange(image.height) + 0.5) * full_h / image.height
    xs = (np.arange(image.width) + 0.5) * full_w / image.width
    tile_row = np.clip(np.searchsorted(row_starts, ys, side="right") - 1, 0, len(row_starts) - 1)
    tile_col = np.clip(np.searchsorted(col_starts, xs, side="right") - 1, 0, len(col_starts) - 1)
    colours = class_colours(num_classes)[classes[tile_row][:, tile_col]]
    grey = pixels.mean(axis=2, keepdims=True)
    tinted = np.clip((1 - TINT) * grey + TINT * colours, 0, 1)
    write_image(target, (tinted * 255 + 0.5).astype(np.uint8), bit_depth=8, overwrite=overwrite)
