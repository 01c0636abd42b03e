"""The metadata built for the written file, from what the input carried (metadata.py reads that).

EXIF made true to the written picture (`picture_exif`: upright, its new size and resolution, no thumbnail)
and cut to the 64 KB that JPEG and libvips keep (`fit_exif`); IPTC-IIM records wrapped in the Photoshop
resource block a JPEG's APP13 holds (`iptc_for_jpeg`); an ICC profile saying what a PNG's gAMA and cHRM
chunks said, for formats that have no such chunks (`icc_from_png_colour`). Small and dependency-free.
"""

from __future__ import annotations

import struct

from classsr_cli.imaging.metadata import EXIF_PREFIX, IPTC_RESOURCE, PHOTOSHOP_HEADER, upright_exif

_IMAGE_WIDTH, _IMAGE_LENGTH = 0x0100, 0x0101
_X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT = 0x011A, 0x011B, 0x0128
_EXIF_IFD = 0x8769
_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION = 0xA002, 0xA003
_SHORT, _LONG, _RATIONAL = 3, 4, 5  # TIFF field types
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


# -- IPTC for JPEG -------------------------------------------------------------------------------------------


def iptc_for_jpeg(records: bytes) -> bytes:
    """IPTC-IIM records as a JPEG's APP13 payload: a Photoshop resource block with resource 0x0404."""
    resource = b"8BIM" + struct.pack(">H", IPTC_RESOURCE) + b"\x00\x00" + struct.pack(">I", len(records))
    return PHOTOSHOP_HEADER + resource + records + b"\x00" * (len(records) % 2)


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
