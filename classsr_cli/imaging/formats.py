"""The output formats: the extension that names each, what each can store, and what of the metadata goes in.

Metadata (docs/formats.md has the table): the ICC profile (when it fits the channels), EXIF (describing
the written pixels, see output_metadata.picture_exif) and XMP go into PNG, JPEG and WebP. TIFF output carries
ICC, XMP and IPTC; EXIF is not written to TIFF, where it needs its own sub-IFD that neither tifffile nor
libvips writes. PNG colour chunks (gAMA, cHRM, sRGB) and text chunks are copied as written into PNG output;
elsewhere gAMA and cHRM become an ICC profile saying the same (sRGB needs nothing: untagged files are taken
as sRGB). IPTC goes into JPEG and TIFF, JPEG comments into JPEG and, as "Comment" text, into PNG. libvips
writes neither colour nor text chunks as read, nor JPEG comments: they are inserted into the stream libvips
writes (insertion.py). What a format cannot hold is listed in `MetadataPlan.dropped` (`ImageWriter.dropped`),
in words, before any work, for the caller to say so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from classsr_cli.errors import OutputError
from classsr_cli.imaging.insertion import jpeg_segment
from classsr_cli.imaging.metadata import (
    EXIF_PREFIX,
    JPEG_COMMENT,
    JPEG_MAX_PAYLOAD,
    PNG_COLOUR_CHUNKS,
    PNG_TEXT_CHUNKS,
    icc_fits,
    png_text_keyword,
    upright_xmp,
)
from classsr_cli.imaging.output_metadata import (
    EXIF_MAX_BYTES,
    fit_exif,
    icc_from_png_colour,
    iptc_for_jpeg,
    picture_exif,
)

_FORMAT_BY_SUFFIX = {
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
}
# Largest side each format's encoder can store: JPEG's header holds 65535, but libjpeg stops at 65500.
MAX_SIDE = {"png": 2**31 - 1, "tiff": 2**32 - 1, "jpeg": 65500, "webp": 16383}
EIGHT_BIT_ONLY = {"jpeg", "webp"}
FORMAT_NAMES = {"png": "PNG", "tiff": "TIFF", "jpeg": "JPEG", "webp": "WebP"}
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_MAX_XMP = JPEG_MAX_PAYLOAD - len(_XMP_HEADER)  # one APP1 segment (libvips writes no extended XMP)


def output_format(path: str | os.PathLike[str]) -> str:
    """ "png", "tiff", "jpeg" or "webp" from the file extension (any case); OutputError for anything else."""
    suffix = Path(path).suffix.lower()
    try:
        return _FORMAT_BY_SUFFIX[suffix]
    except KeyError:
        known = ", ".join(sorted(_FORMAT_BY_SUFFIX))
        what = f"unknown extension {suffix!r}" if suffix else "no extension"
        raise OutputError(f"{path}: {what}; the output must end in one of {known}") from None


@dataclass
class MetadataPlan:
    """What of the metadata goes into a file of one format, and what cannot (in words)."""

    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None  # IPTC-IIM records
    png_chunks: list[tuple[bytes, bytes]] = field(default_factory=list)  # inserted into PNG output
    jpeg_segments: list[bytes] = field(default_factory=list)  # inserted into JPEG output
    dropped: list[str] = field(default_factory=list)


def _comment_chunk(comment: bytes) -> tuple[bytes, bytes]:
    """A JPEG comment as PNG's "Comment" text: tEXt (Latin-1) for ASCII or bytes that are not UTF-8, iTXt
    (UTF-8) otherwise; a NUL, which would end the text early, is left out."""
    text = comment.replace(b"\x00", b"")
    try:
        if not text.isascii():
            text.decode("utf-8")
            return b"iTXt", b"Comment\x00\x00\x00\x00\x00" + text  # uncompressed, no language
    except UnicodeDecodeError:
        pass
    return b"tEXt", b"Comment\x00" + text


def _with_exif_prefix(exif: bytes | None) -> bytes | None:
    # libvips accepts both; the prefixed form is what JPEG's APP1 needs and what libvips itself reads back
    if exif is None or exif.startswith(EXIF_PREFIX):
        return exif
    return EXIF_PREFIX + exif


def plan_metadata(
    image_format: str,
    width: int,
    height: int,
    color_channels: int,
    dpi: float,
    icc: bytes | None,
    exif: bytes | None,
    xmp: bytes | None,
    iptc: bytes | None,
    comments: list[bytes],
    png_chunks: list[tuple[bytes, bytes]],
) -> MetadataPlan:
    """Decide what goes where (see the module docstring) and list in `dropped` what cannot go."""
    name = FORMAT_NAMES[image_format]
    plan = MetadataPlan()
    plan.icc = icc if icc_fits(icc, color_channels) else None
    if image_format == "webp" and color_channels == 1 and plan.icc:
        plan.icc = None
        plan.dropped.append("ICC profile (WebP stores grey as RGB, which a grey profile does not describe)")
    colour = [(kind, payload) for kind, payload in png_chunks if kind in PNG_COLOUR_CHUNKS]
    text = [(kind, payload) for kind, payload in png_chunks if kind in PNG_TEXT_CHUNKS]
    if image_format == "png":
        # with an ICC profile an sRGB chunk must not be written (the PNG specification): the profile rules
        plan.png_chunks = [c for c in colour if not (c[0] == b"sRGB" and plan.icc)] + text
        plan.png_chunks += [_comment_chunk(comment) for comment in comments]
    else:
        if plan.icc is None and colour:
            grey = color_channels == 1 and image_format != "webp"
            plan.icc = icc_from_png_colour(colour, grey=grey)
            kinds = {kind for kind, _ in colour}
            if plan.icc is None and b"gAMA" in kinds and b"sRGB" not in kinds:
                plan.dropped.append("PNG gAMA/cHRM colour (values unusable for an ICC profile)")
        if text:
            keywords = ", ".join(dict.fromkeys(png_text_keyword(payload) for _, payload in text))
            plan.dropped.append(f"PNG text {keywords} ({name} has no place for PNG text)")

    plan.exif = _with_exif_prefix(picture_exif(exif, width, height, dpi))
    if plan.exif and image_format == "tiff":
        plan.exif = None
        plan.dropped.append("EXIF (not written to TIFF: neither tifffile nor libvips writes it there)")
    # libvips reads at most 64 KB of EXIF, and JPEG holds no more in its one APP1 segment
    plan.exif, lost = fit_exif(plan.exif, EXIF_MAX_BYTES)
    plan.dropped += [f"{item}: EXIF is kept up to 64 KB" for item in lost]

    plan.xmp = upright_xmp(xmp)
    if plan.xmp and image_format == "jpeg" and len(plan.xmp) > _JPEG_MAX_XMP:
        plan.dropped.append(f"XMP ({len(plan.xmp):,} bytes: JPEG holds {_JPEG_MAX_XMP:,} in one segment)")
        plan.xmp = None

    plan.iptc = iptc or None
    if plan.iptc and image_format == "jpeg" and len(iptc_for_jpeg(plan.iptc)) > JPEG_MAX_PAYLOAD:
        plan.dropped.append(f"IPTC ({len(plan.iptc):,} bytes: JPEG holds {JPEG_MAX_PAYLOAD:,})")
        plan.iptc = None
    elif plan.iptc and image_format in ("png", "webp"):
        plan.dropped.append(f"IPTC ({name} has no place for it)")
        plan.iptc = None

    if comments and image_format == "jpeg":
        plan.jpeg_segments = [jpeg_segment(JPEG_COMMENT, c[:JPEG_MAX_PAYLOAD]) for c in comments]
    elif comments and image_format != "png":
        plan.dropped.append(f"JPEG comments ({name} has no place for them)")
    return plan
