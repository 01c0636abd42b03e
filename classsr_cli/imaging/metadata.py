"""What an input file carries beyond its pixels, read for the output: EXIF, XMP, ICC, IPTC, PNG chunks, JPEG
comments. Small and dependency-free; what is built for the written file is in output_metadata.py.

The reader hands out pixels already turned upright (EXIF orientation applied), so every EXIF or XMP block it
passes on must say "orientation 1"; otherwise a viewer would rotate the upscaled image a second time.

PNG colour (gAMA, cHRM, sRGB) and text chunks, JPEG comments and the JPEG end marker are found by walking the
file's chunks or segments (`read_png_extras`, `read_jpeg_extras`): libvips does not report them as written.
IPTC-IIM records are taken out of the Photoshop resource block a JPEG keeps them in (`iptc_records`).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass

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


# -- PNG chunks ----------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB")
PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_XMP_KEYWORD = b"XML:com.adobe.xmp\x00"
MAX_PNG_TEXT_BYTES = 16 * 2**20  # text kept per file: far above real use, a bound on a hostile file


@dataclass(frozen=True)
class PngExtras:
    """What a PNG holds beyond the pixels that libvips does not report or does not keep as written."""

    frames: int = 1  # images in an animated PNG (acTL's frames, plus a default image outside the animation)
    chunks: tuple[tuple[bytes, bytes], ...] = ()  # colour and text chunks, (type, payload), in file order
    unread: tuple[str, ...] = ()  # what was left out, in words (text beyond MAX_PNG_TEXT_BYTES)


def read_png_extras(path: str | os.PathLike[str]) -> PngExtras:
    """Frames (acTL), colour chunks (gAMA, cHRM, sRGB) and text chunks (tEXt, zTXt, iTXt) of a PNG file.

    Chunk headers are walked from the signature to IEND without reading image data; chunks with a bad CRC
    are left out, as decoders ignore them. Text stays as written (zTXt compressed, iTXt with its language);
    the XMP packet (keyword XML:com.adobe.xmp) is not among it: libvips reads it as XMP.
    A file that ends early or is not a PNG yields what was found so far: the decoder reports such files.
    """
    frames, animated, default_is_frame, seen_frame_control = 1, False, False, False
    chunks: list[tuple[bytes, bytes]] = []
    unread: list[str] = []
    text_bytes = 0
    with open(path, "rb") as handle:
        if handle.read(8) != PNG_SIGNATURE:
            return PngExtras()
        while True:
            head = handle.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            wanted = kind in PNG_COLOUR_CHUNKS or kind in PNG_TEXT_CHUNKS or kind == b"acTL"
            if kind in PNG_TEXT_CHUNKS and text_bytes + length > MAX_PNG_TEXT_BYTES:
                unread.append(f"PNG {kind.decode()} chunk ({length:,} bytes, beyond the text kept per file)")
                wanted = False
            if not wanted:
                if kind == b"fcTL":
                    seen_frame_control = True
                elif kind == b"IDAT" and seen_frame_control:
                    default_is_frame = True
                elif kind == b"IEND":
                    break
                handle.seek(length + 4, os.SEEK_CUR)
                continue
            payload, crc = handle.read(length), handle.read(4)
            if len(crc) < 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + payload):
                continue
            if kind == b"acTL" and length == 8:
                frames, animated = max(1, struct.unpack(">I", payload[:4])[0]), True
            elif kind in PNG_TEXT_CHUNKS and payload.startswith(_XMP_KEYWORD):
                continue  # XMP: libvips reads it, and the writer writes it, as XMP
            elif kind != b"acTL":
                chunks.append((kind, payload))
                if kind in PNG_TEXT_CHUNKS:
                    text_bytes += length
    return PngExtras(
        # without an fcTL before IDAT, the image decoders show is not one of the animation's frames
        frames=frames + (1 if animated and not default_is_frame else 0),
        chunks=tuple(chunks),
        unread=tuple(unread),
    )


def png_text_keyword(payload: bytes) -> str:
    """The keyword of a tEXt, zTXt or iTXt chunk (Latin-1, up to its NUL)."""
    return payload.split(b"\x00", 1)[0].decode("latin-1")


# -- JPEG segments -------------------------------------------------------------------------------------------

JPEG_COMMENT, JPEG_APP13, JPEG_EOI = 0xFE, 0xED, b"\xff\xd9"
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length
JPEG_MAX_PAYLOAD = 65533  # a segment's length field counts itself: 65535 - 2


@dataclass(frozen=True)
class JpegExtras:
    """What a JPEG holds that libvips does not report: its comments, and whether its end marker is there."""

    comments: tuple[bytes, ...] = ()  # COM segments before the image data, as written
    has_end: bool = True  # an end-of-image marker follows the image data


def read_jpeg_extras(path: str | os.PathLike[str]) -> JpegExtras:
    """The comments of a JPEG file and whether it ends with an end-of-image (EOI) marker.

    Marker segments are walked from SOI to the first SOS (start of scan) without decoding; the EOI is looked
    for after that SOS, so an EOI inside an EXIF thumbnail does not count, and data after the EOI (a
    phone's motion-photo video) does not hide it. Malformed files yield what was found: the decoder reports
    them.
    """
    comments: list[bytes] = []
    with open(path, "rb") as handle:
        data = handle.read(2)
        if data != b"\xff\xd8":
            return JpegExtras()
        while True:
            byte = handle.read(1)
            if not byte:
                return JpegExtras(tuple(comments))
            if byte != b"\xff":
                continue  # not a marker: skip, as decoders do
            marker = handle.read(1)
            while marker == b"\xff":  # fill bytes
                marker = handle.read(1)
            if not marker or marker[0] in _STANDALONE_MARKERS or marker[0] == 0:
                continue
            size = handle.read(2)
            if len(size) < 2:
                return JpegExtras(tuple(comments))
            length = struct.unpack(">H", size)[0]
            if marker[0] == 0xDA:  # SOS: the image data follows
                scan = handle.tell()
                break
            if marker[0] == JPEG_COMMENT:
                comments.append(handle.read(max(0, length - 2)))
            else:
                handle.seek(max(0, length - 2), os.SEEK_CUR)
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        # the end marker is almost always the last two bytes; only otherwise is the rest searched
        handle.seek(max(scan, end - 2))
        if handle.read(2) == JPEG_EOI:
            return JpegExtras(tuple(comments), True)
        handle.seek(scan)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return JpegExtras(tuple(comments), view.find(JPEG_EOI, scan) >= 0)


# -- IPTC ----------------------------------------------------------------------------------------------------

PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"
IPTC_RESOURCE = 0x0404


def iptc_records(blob: bytes | None) -> bytes | None:
    """The IPTC-IIM records in libvips' "iptc-data": a JPEG's APP13 (a Photoshop resource block whose
    resource 0x0404 holds them) or a TIFF's IPTC tag (the records themselves). None when there are none.

    The block's other Photoshop resources (thumbnail, resolution, slices) describe the input picture and
    are not carried over.
    """
    if not blob:
        return None
    if blob[0] == 0x1C:  # an IIM record starts with its tag marker
        return bytes(blob)
    if not blob.startswith(PHOTOSHOP_HEADER):
        return None
    position = len(PHOTOSHOP_HEADER)
    while position + 12 <= len(blob) and blob[position : position + 4] == b"8BIM":
        (resource,) = struct.unpack_from(">H", blob, position + 4)
        name_length = blob[position + 6]
        position += 6 + name_length + 1 + (name_length + 1) % 2  # a Pascal string padded to even size
        if position + 4 > len(blob):
            return None
        (size,) = struct.unpack_from(">I", blob, position)
        data = blob[position + 4 : position + 4 + size]
        if resource == IPTC_RESOURCE:
            return bytes(data) if data else None
        position += 4 + size + size % 2
    return None
