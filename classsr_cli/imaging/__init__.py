"""Image input and output: streamed reading and atomic, streamed writing of large images.

Arrays at this boundary are float32 (height, width, channels) in [0, 1]: grey (1), grey+alpha (2), RGB (3)
or RGBA (4), alpha last. reader.py and writer.py explain the decisions on memory, colour and metadata.
"""

from classsr_cli.imaging.reader import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    ImageReader,
    open_image,
    read_image,
)
from classsr_cli.imaging.writer import (
    DEFAULT_QUALITY,
    ImageWriter,
    output_format,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_QUALITY",
    "ImageInfo",
    "ImageReader",
    "ImageWriter",
    "open_image",
    "output_format",
    "read_image",
    "write_image",
]
