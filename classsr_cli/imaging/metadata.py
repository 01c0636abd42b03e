"""Small, dependency-free helpers for the metadata carried from input to output (EXIF, XMP, ICC).

The reader hands out pixels already turned upright (EXIF orientation applied), so every EXIF or XMP block it
passes on must say "orientation 1"; otherwise a viewer would rotate the upscaled image a second time.
"""

from __future__ import annotations

import re
import struct

EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112
_SHORT = 3

# XMP can repeat the orientation as an attribute or as an element; both spellings are rewritten to 1.
_XMP_ORIENTATION_ATTRIBUTE = re.compile(rb"(tiff:Orientation\s*=\s*[\"'])\s*\d+\s*([\"'])")
_XMP_ORIENTATION_ELEMENT = re.compile(rb"(<tiff:Orientation>)\s*\d+\s*(</tiff:Orientation>)")


def upright_exif(exif: bytes | None) -> bytes | None:
    """Return `exif` with its IFD0 orientation set to 1 (top-left), or None when it is empty or malformed.

    A block we cannot parse is dropped rather than passed on: we could not vouch for its orientation.
    Accepts the block with or without the leading b"Exif\\0\\0" (libvips gives both, depending on the format).
    """
    if not exif:
        return None
    data = bytearray(exif)
    base = len(EXIF_PREFIX) if data.startswith(EXIF_PREFIX) else 0
    if len(data) < base + 8:
        return None
    byte_order = bytes(data[base : base + 2])
    if byte_order == b"II":
        endian = "<"
    elif byte_order == b"MM":
        endian = ">"
    else:
        return None
    magic, ifd0_offset = struct.unpack_from(endian + "HI", data, base + 2)
    ifd0 = base + ifd0_offset
    if magic != 42 or ifd0 + 2 > len(data):
        return None
    (entry_count,) = struct.unpack_from(endian + "H", data, ifd0)
    for index in range(entry_count):
        entry = ifd0 + 2 + 12 * index
        if entry + 12 > len(data):
            return None
        tag, value_type, count = struct.unpack_from(endian + "HHI", data, entry)
        if tag == _ORIENTATION_TAG and value_type == _SHORT and count == 1:
            # a single SHORT lives inline in the first two bytes of the value field
            struct.pack_into(endian + "H", data, entry + 8, 1)
    return bytes(data)


_IMAGE_WIDTH, _IMAGE_LENGTH = 0x0100, 0x0101
_X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT = 0x011A, 0x011B, 0x0128
_EXIF_IFD = 0x8769
_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION = 0xA002, 0xA003
_LONG, _RATIONAL = 4, 5
_INCH = 2


def picture_exif(exif: bytes | None, width: int, height: int, dpi: float) -> bytes | None:
    """`exif` made true to the picture it goes out with, or None when it is empty or malformed.

    Orientation 1 (the pixels are upright); the pixel size, wherever EXIF states it (IFD0's ImageWidth and
    ImageLength, the Exif IFD's PixelXDimension and PixelYDimension), set to `width` x `height`; the
    resolution set to `dpi` dots per inch, as the file's own header says; and no IFD1, whose thumbnail shows
    the input at its old size and, for a rotated input, turned the other way. Other tags (camera, time,
    exposure) describe the shot, not the pixels, and are kept.
    """
    data = upright_exif(exif)
    if data is None:
        return None
    data = bytearray(data)
    base = len(EXIF_PREFIX) if data.startswith(EXIF_PREFIX) else 0
    endian = "<" if data[base : base + 2] == b"II" else ">"
    sizes = {
        _IMAGE_WIDTH: width,
        _IMAGE_LENGTH: height,
        _PIXEL_X_DIMENSION: width,
        _PIXEL_Y_DIMENSION: height,
    }

    def rewrite(ifd: int) -> tuple[int | None, int]:
        """Rewrite one IFD's entries in place; (the Exif IFD's offset if listed, where the entries end)."""
        (count,) = struct.unpack_from(endian + "H", data, base + ifd)
        exif_ifd = None
        for index in range(count):
            entry = base + ifd + 2 + 12 * index
            tag, value_type, items, value = struct.unpack_from(endian + "HHII", data, entry)
            if tag in sizes and items == 1 and value_type in (_SHORT, _LONG):
                # a SHORT holds at most 65535: always store the size as a LONG
                struct.pack_into(endian + "HHII", data, entry, tag, _LONG, 1, sizes[tag])
            elif tag in (_X_RESOLUTION, _Y_RESOLUTION) and value_type == _RATIONAL and items == 1:
                struct.pack_into(endian + "II", data, base + value, round(dpi * 1000), 1000)
            elif tag == _RESOLUTION_UNIT and value_type == _SHORT and items == 1:
                struct.pack_into(endian + "HH", data, entry + 8, _INCH, 0)
            elif tag == _EXIF_IFD:
                exif_ifd = value
        return exif_ifd, base + ifd + 2 + 12 * count

    try:
        (ifd0,) = struct.unpack_from(endian + "I", data, base + 4)
        exif_ifd, ifd0_end = rewrite(ifd0)
        if exif_ifd is not None:
            rewrite(exif_ifd)
        struct.pack_into(endian + "I", data, ifd0_end, 0)  # IFD0 links to no IFD1: no thumbnail
    except struct.error:
        return None  # offsets outside the block: we cannot vouch for what it says
    return bytes(data)


def exif_orientation(exif: bytes | None) -> int | None:
    """The IFD0 orientation stored in an EXIF block (1..8), or None if absent or unreadable."""
    if not exif:
        return None
    base = len(EXIF_PREFIX) if exif.startswith(EXIF_PREFIX) else 0
    try:
        endian = {b"II": "<", b"MM": ">"}[exif[base : base + 2]]
        _, ifd0_offset = struct.unpack_from(endian + "HI", exif, base + 2)
        ifd0 = base + ifd0_offset
        (entry_count,) = struct.unpack_from(endian + "H", exif, ifd0)
        for index in range(entry_count):
            tag, value_type, count, value = struct.unpack_from(endian + "HHIH", exif, ifd0 + 2 + 12 * index)
            if tag == _ORIENTATION_TAG and value_type == _SHORT and count == 1:
                return value
    except (KeyError, struct.error):
        return None
    return None


def upright_xmp(xmp: bytes | None) -> bytes | None:
    """Return `xmp` with any tiff:Orientation set to 1, or None when empty."""
    if not xmp:
        return None
    xmp = _XMP_ORIENTATION_ATTRIBUTE.sub(rb"\g<1>1\g<2>", xmp)
    return _XMP_ORIENTATION_ELEMENT.sub(rb"\g<1>1\g<2>", xmp)


def icc_fits(icc: bytes | None, color_channels: int) -> bool:
    """Whether an ICC profile describes pixels with this many colour channels (GRAY for 1, RGB for 3).

    A profile that does not fit (a CMYK profile after conversion to sRGB, an RGB profile on a grey image)
    would make viewers render the output wrongly or refuse it, so callers drop it.
    """
    if not icc or len(icc) < 128:  # 128 bytes is the fixed ICC header
        return False
    colour_space = icc[16:20]
    return (color_channels == 1 and colour_space == b"GRAY") or (
        color_channels == 3 and colour_space == b"RGB "
    )
