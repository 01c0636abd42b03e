"""Image input and output: streamed reading and atomic, streamed writing of large images.

Arrays at this boundary are float32 (height, width, channels) in [0, 1]: grey (1), grey+alpha (2), RGB (3)
or RGBA (4), alpha last. reader.py, writer.py and formats.py explain the decisions on memory, colour and
metadata.

The reader and writer (and with them pyvips) load on first use, so that `classsr_cli.imaging.bicubic` and
the training code that needs only it run where pyvips is not installed.
"""

import importlib

_EXPORTS = {
    "DEFAULT_MAX_PIXELS": "reader",
    "ImageInfo": "reader",
    "ImageReader": "reader",
    "open_image": "reader",
    "read_image": "reader",
    "DEFAULT_QUALITY": "writer",
    "ImageWriter": "writer",
    "output_format": "formats",
    "write_image": "writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
