"""Finding photos in a folder and reading them as 8-bit sRGB RGB arrays (the form datasets are made from)."""

from pathlib import Path

import numpy as np

# what counts as a photo in a source folder (the formats the reader decodes); other files are ignored
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".gif", ".avif", ".heic", ".heif")


def list_photos(folder: Path) -> list[Path]:
    """The photos directly inside `folder`, sorted by name so that every run sees the same order."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in PHOTO_SUFFIXES
    )


def read_rgb8(path: Path) -> np.ndarray:
    """An (H, W, 3) uint8 sRGB array, decoded by the project's image reader (the one `upscale` uses).

    The reader applies the EXIF orientation and converts to sRGB; here grey becomes RGB, transparency is
    flattened onto white and 16-bit samples are rounded to 8 bits (datasets are 8-bit, as in the paper).
    Raises InputError with a one-line reason when the file cannot be decoded.
    """
    from classsr_cli.imaging import read_image

    pixels = read_image(path, max_pixels=None)
    channels = pixels.shape[2]
    if channels in (2, 4):  # alpha last
        alpha = pixels[:, :, -1:]
        pixels = pixels[:, :, :-1] * alpha + (1.0 - alpha)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.clip(np.floor(pixels * 255.0 + 0.5), 0, 255).astype(np.uint8)
