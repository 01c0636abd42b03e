"""Small, dependency-free helpers for the metadata carried from input to output (EXIF, XMP, ICC).

The reader hands out pixels already turned upright (EXIF orientation applied), so every EXIF or XMP block it
passes on must say "orientation 1"; otherwise a viewer would rotate the upscaled image a second time.
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


# -- EXIF over 64 KB -----------------------------------------------------------------------------------------

# Sizes of the TIFF field types (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT, SLONG,
# SRATIONAL, FLOAT, DOUBLE, IFD); an entry of another type cannot be moved safely and is dropped.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_GPS_IFD, _INTEROP_IFD, _MAKER_NOTE = 0x8825, 0xA005, 0x927C
_SUB_IFDS = {_EXIF_IFD: "Exif", _GPS_IFD: "GPS", _INTEROP_IFD: "Interop"}
_TAG_NAMES = {
    _MAKER_NOTE: "maker note",
    0x9286: "user comment",
    0xC4A5: "PrintIM block",
    0xEA1C: "padding",
    0x927D: "maker note",
}
# EXIF kept, without its prefix: one JPEG APP1 segment holds 65527 bytes, and libvips reads no more than that
# (libexif stops at 64 KB) in any format. On writing libvips adds its own tags (resolution, pixel size,
# versions: a few hundred bytes), and drops the whole block if it then exceeds the segment: hence the room.
EXIF_MAX_BYTES = 65533 - len(EXIF_PREFIX) - 2048


def _tag_name(tag: int) -> str:
    return _TAG_NAMES.get(tag, f"tag 0x{tag:04X}")


def _read_ifd(data: bytes, base: int, offset: int, endian: str, depth: int = 0) -> list[list]:
    """Entries [tag, type, count, value bytes, sub-IFD entries or None] of the IFD at `offset`."""
    (count,) = struct.unpack_from(endian + "H", data, base + offset)
    entries = []
    for index in range(count):
        position = base + offset + 2 + 12 * index
        tag, value_type, items, value = struct.unpack_from(endian + "HHII", data, position)
        if value_type not in _TYPE_SIZES:
            continue
        size = _TYPE_SIZES[value_type] * items
        if tag in _SUB_IFDS and depth < 2 and items == 1 and value_type in (_LONG, 13):
            entries.append([tag, _LONG, 1, b"", _read_ifd(data, base, value, endian, depth + 1)])
            continue
        if size <= 4:
            raw = data[position + 8 : position + 8 + size]
        else:
            if base + value + size > len(data):
                raise struct.error("value outside the block")
            raw = data[base + value : base + value + size]
        entries.append([tag, value_type, items, bytes(raw), None])
    return entries


def _entries_size(entries: list[list]) -> int:
    """Bytes an IFD takes when written: its directory, its values over 4 bytes and its sub-IFDs."""
    size = 2 + 12 * len(entries) + 4
    for _, _, _, raw, sub in entries:
        if sub is not None:
            size += _entries_size(sub)
        elif len(raw) > 4:
            size += len(raw) + len(raw) % 2
    return size


def _write_ifd(entries: list[list], offset: int, endian: str) -> bytes:
    """The IFD written at `offset` (from the TIFF header): directory, then values, then sub-IFDs."""
    entries = sorted(entries, key=lambda entry: entry[0])
    directory = struct.pack(endian + "H", len(entries))
    tail = b""
    tail_start = offset + 2 + 12 * len(entries) + 4
    for tag, value_type, items, raw, sub in entries:
        if sub is not None:
            where = tail_start + len(tail)
            tail += _write_ifd(sub, where, endian)
            directory += struct.pack(endian + "HHII", tag, _LONG, 1, where)
        elif len(raw) > 4:
            where = tail_start + len(tail)
            tail += raw + b"\x00" * (len(raw) % 2)  # values start on word boundaries
            directory += struct.pack(endian + "HHII", tag, value_type, items, where)
        else:
            directory += struct.pack(endian + "HHI", tag, value_type, items) + raw.ljust(4, b"\x00")
    return directory + struct.pack(endian + "I", 0) + tail


def fit_exif(exif: bytes | None, limit: int = EXIF_MAX_BYTES) -> tuple[bytes | None, list[str]]:
    """`exif` made to fit `limit` bytes (not counting an Exif prefix), and what was left out, in words.

    A block within the limit is returned as it is. A larger one is rebuilt from IFD0 and its Exif, GPS and
    Interop IFDs (no IFD1 thumbnail): first without the maker note (a vendor's private block, whose
    internal offsets do not survive a move anyway), then without the largest remaining values until it fits.
    The camera, time, exposure and GPS tags, a few bytes each, stay. The list names each value dropped, with
    its size, e.g. "EXIF maker note (70,000 bytes)". (None, ["EXIF (...)"]) when the block cannot be parsed.
    """
    if not exif:
        return None, []
    prefixed = exif.startswith(EXIF_PREFIX)
    if len(exif) - (len(EXIF_PREFIX) if prefixed else 0) <= limit:
        return exif, []
    base = len(EXIF_PREFIX) if prefixed else 0
    try:
        endian = {b"II": "<", b"MM": ">"}[exif[base : base + 2]]
        (ifd0,) = struct.unpack_from(endian + "I", exif, base + 4)
        entries = _read_ifd(exif, base, ifd0, endian)
    except (KeyError, struct.error):
        return None, [f"EXIF ({len(exif):,} bytes, over the 64 KB that can be kept, and unreadable)"]

    def values(tree: list[list]):
        for entry in tree:
            if entry[4] is not None:
                yield from values(entry[4])
            else:
                yield tree, entry

    dropped = []
    header = 8
    while header + _entries_size(entries) > limit:
        candidates = list(values(entries))
        if not candidates:
            break
        notes = [item for item in candidates if item[1][0] in (_MAKER_NOTE, 0x927D)]
        tree, entry = notes[0] if notes else max(candidates, key=lambda item: len(item[1][3]))
        tree.remove(entry)
        dropped.append(f"EXIF {_tag_name(entry[0])} ({len(entry[3]):,} bytes)")
    body = exif[base : base + 4] + struct.pack(endian + "I", header) + _write_ifd(entries, header, endian)
    return (EXIF_PREFIX + body if prefixed else body), dropped


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


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


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


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    """One JPEG marker segment; `payload` at most JPEG_MAX_PAYLOAD bytes."""
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


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

_PHOTOSHOP = b"Photoshop 3.0\x00"
_IPTC_RESOURCE = 0x0404


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
    if not blob.startswith(_PHOTOSHOP):
        return None
    position = len(_PHOTOSHOP)
    while position + 12 <= len(blob) and blob[position : position + 4] == b"8BIM":
        (resource,) = struct.unpack_from(">H", blob, position + 4)
        name_length = blob[position + 6]
        position += 6 + name_length + 1 + (name_length + 1) % 2  # a Pascal string padded to even size
        if position + 4 > len(blob):
            return None
        (size,) = struct.unpack_from(">I", blob, position)
        data = blob[position + 4 : position + 4 + size]
        if resource == _IPTC_RESOURCE:
            return bytes(data) if data else None
        position += 4 + size + size % 2
    return None


def iptc_for_jpeg(records: bytes) -> bytes:
    """IPTC-IIM records as a JPEG's APP13 payload: a Photoshop resource block with resource 0x0404."""
    resource = b"8BIM" + struct.pack(">H", _IPTC_RESOURCE) + b"\x00\x00" + struct.pack(">I", len(records))
    return _PHOTOSHOP + resource + records + b"\x00" * (len(records) % 2)


# -- colour from PNG chunks ----------------------------------------------------------------------------------

_D50 = (0.9642, 1.0, 0.8249)  # the ICC connection space's white
_BRADFORD = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))
# Rec. 709 (sRGB) primaries and D65 white: what PNG decoders assume for a gAMA chunk without cHRM
_SRGB_CHROMATICITIES = (0.3127, 0.3290, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ \x00\x00\x00\x00" + b"".join(_s15(v) for v in xyz)


def _solve(matrix, vector):
    """matrix^-1 @ vector for a 3x3 matrix (Cramer's rule)."""

    def det(m):
        return (
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        )

    whole = det(matrix)
    if abs(whole) < 1e-12:
        raise ValueError("degenerate chromaticities")
    return [
        det([[vector[r] if c == column else matrix[r][c] for c in range(3)] for r in range(3)]) / whole
        for column in range(3)
    ]


def _xyz(x: float, y: float) -> tuple[float, float, float]:
    if y <= 0:
        raise ValueError("chromaticity y must be positive")
    return x / y, 1.0, (1 - x - y) / y


def icc_from_png_colour(chunks, grey: bool) -> bytes | None:
    """An ICC profile (version 2, display class) saying what a PNG's gAMA and cHRM chunks say, or None.

    None when there is no gAMA chunk, when an sRGB chunk is present (the samples are sRGB, as untagged
    files are taken to be), or when the values are unusable (zero gamma, degenerate primaries). Without
    cHRM the primaries and white are sRGB's, as PNG decoders assume. `grey`: a GRAY profile (one curve);
    else RGB: colorants adapted to the D50 connection white with the Bradford transform, the white point
    tag holding the file's own white, as in the sRGB profile of IEC 61966-2-1.
    """
    found = dict(chunks)
    if b"sRGB" in found or len(found.get(b"gAMA", b"")) != 4:
        return None
    (gamma,) = struct.unpack(">I", found[b"gAMA"])
    if gamma == 0 or 100000 / gamma > 255:
        return None
    chromaticities = _SRGB_CHROMATICITIES
    if len(found.get(b"cHRM", b"")) == 32:
        chromaticities = tuple(v / 100000 for v in struct.unpack(">8I", found[b"cHRM"]))
    try:
        white = _xyz(*chromaticities[0:2])
        primaries = [_xyz(*chromaticities[i : i + 2]) for i in (2, 4, 6)]
        columns = [[primaries[c][r] for c in range(3)] for r in range(3)]  # primaries as columns
        strengths = _solve(columns, white)
    except ValueError:
        return None
    cone_white = [sum(_BRADFORD[r][c] * white[c] for c in range(3)) for r in range(3)]
    cone_d50 = [sum(_BRADFORD[r][c] * _D50[c] for c in range(3)) for r in range(3)]
    inverse = [_solve(_BRADFORD, [1.0 if i == r else 0.0 for i in range(3)]) for r in range(3)]  # columns

    def adapt(xyz):
        cones = [
            sum(_BRADFORD[r][c] * xyz[c] for c in range(3)) * cone_d50[r] / cone_white[r] for r in range(3)
        ]
        return [sum(inverse[c][r] * cones[c] for c in range(3)) for r in range(3)]

    # the decoding curve: sample ** (1 / file gamma), in u8Fixed8 (within 0.2% of the exponent)
    curve = b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, round(100000 / gamma * 256)) + b"\x00\x00"
    description = b"PNG gAMA" + (b" and cHRM" if b"cHRM" in found else b"")
    tags = [
        (
            b"desc",
            b"desc\x00\x00\x00\x00"
            + struct.pack(">I", len(description) + 1)
            + description
            + b"\x00"
            + b"\x00" * (4 + 4 + 2 + 1 + 67),
        ),
        (b"cprt", b"text\x00\x00\x00\x00No copyright, use freely\x00"),
        (b"wtpt", _xyz_tag(white)),
    ]
    if grey:
        tags.append((b"kTRC", curve))
    else:
        for name, index in ((b"rXYZ", 0), (b"gXYZ", 1), (b"bXYZ", 2)):
            tags.append((name, _xyz_tag(adapt([v * strengths[index] for v in primaries[index]]))))
        tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    table, body = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for name, data in tags:
        table += name + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\x00" * (-len(data) % 4)
    size = offset + len(body)
    header = struct.pack(
        ">I4sI4s4s4s6H4s",
        size,
        b"\x00" * 4,
        0x02100000,
        b"mntr",
        b"GRAY" if grey else b"RGB ",
        b"XYZ ",
        2000,
        1,
        1,
        0,
        0,
        0,
        b"acsp",
    )
    header += b"\x00" * (64 - len(header)) + struct.pack(">I", 0) + b"".join(_s15(v) for v in _D50)
    header += b"\x00" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body
