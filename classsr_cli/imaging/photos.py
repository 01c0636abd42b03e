"""Finding photos in a folder and reading them as 8-bit sRGB RGB arrays (the form datasets are made from)."""

import os
from pathlib import Path

import numpy as np

from classsr_cli.pixels import unit_to_uint8

# what counts as a photo in a source folder (the formats the reader decodes); other files are ignored
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".gif", ".avif", ".heic", ".heif")


def list_photos(folder: Path) -> list[Path]:
    """The photos directly inside `folder`, sorted by name so that every run sees the same order."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in PHOTO_SUFFIXES
    )


def odd_entries(folder: Path) -> list[tuple[Path, str]]:
    """Entries of `folder` named like photos that `list_photos` leaves out because they are no regular file:
    (path, what it is), sorted by name: a folder, a symbolic link to nothing, a FIFO, a socket, a device."""
    odd = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in PHOTO_SUFFIXES or path.is_file():
            continue
        if path.is_dir():
            what = "a folder"
        elif path.is_symlink() and not path.exists():
            what = f"a symbolic link to {os.readlink(path)}, which does not exist"
        elif path.is_fifo():
            what = "a FIFO (named pipe)"
        elif path.is_socket():
            what = "a socket"
        elif path.is_block_device() or path.is_char_device():
            what = "a device"
        else:
            what = "not a regular file"
        odd.append((path, what))
    return odd


def read_rgb8(path: Path) -> np.ndarray:
    """An (H, W, 3) uint8 sRGB array, decoded by the project's image reader (the one `upscale` uses).

    The reader applies the EXIF orientation and converts to sRGB; here grey becomes RGB, transparency is
    flattened onto white and samples are rounded to 8 bits as image files are (`pixels.unit_to_uint8`;
    datasets are 8-bit, as in the paper).
    Raises InputError with a one-line reason when the file cannot be decoded.
    """
    from classsr_cli.imaging.reader import read_image  # pyvips loads on first use

    pixels = read_image(path, max_pixels=None)
    channels = pixels.shape[2]
    if channels in (2, 4):  # alpha last
        alpha = pixels[:, :, -1:]
        pixels = pixels[:, :, :-1] * alpha + (1.0 - alpha)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return unit_to_uint8(pixels)
