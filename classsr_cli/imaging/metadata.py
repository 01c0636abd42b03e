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
