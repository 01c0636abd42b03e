"""Streamed image reading with libvips: full-width strips, top to bottom, memory independent of image height.

Decisions (see also the package docstring):
- Pixels are read with `access="sequential"` and fetched strip by strip through a `pyvips.Region`; libvips
  then decodes only the rows asked for (plus a small line cache), so peak memory follows the strip size, not
  the image. (A Region also reports the decoder's own error, where crop + write_to_memory on a sequential
  image reports a misleading "out of order read".)
- EXIF orientation is applied (`autorot`). Rotating needs random access, so a rotated file is opened with
  `access="random"`; libvips then decodes it once into memory, or into a temporary file on disk when it is
  larger than its disc threshold (100 MB by default, VIPS_DISC_THRESHOLD), so memory stays bounded there too.
- `fail_on="error"` makes truncated or corrupt data raise instead of silently decoding as grey or black.
- CMYK (through its embedded profile when it has one), LAB and other colour spaces become sRGB; palette images
  arrive from libvips already expanded to RGB(A). Grey and grey+alpha stay grey.
- 8-bit samples give bit_depth 8, 16-bit give 16. Float and 32-bit integer samples are refused: their scale
  (linear light? 0..1? 0..65535?) is not recorded in the file; a guess would silently give a wrong picture.
- Only the first page or frame of multi-page TIFF, GIF, WebP, HEIF or animated PNG files is read;
  `ImageInfo.pages` says how many there are, so that callers can say so. libvips does not report the frames
  of an animated PNG: its acTL chunk is read here.
- Metadata libvips does not report or would not keep as written is read from the file itself: PNG colour
  (gAMA, cHRM, sRGB) and text (tEXt, zTXt, iTXt) chunks, JPEG comments (metadata.py).
- A JPEG whose only flaw is a missing end-of-image marker is read, as libjpeg and browsers show it: the
  marker is supplied after the file's last byte, and any decoder warning (data cut short) is then an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyvips

from classsr_cli.errors import InputError
from classsr_cli.imaging.metadata import (
    JPEG_EOI,
    JpegExtras,
    PngExtras,
    icc_fits,
    iptc_records,
    read_jpeg_extras,
    read_png_extras,
    upright_exif,
    upright_xmp,
)
from classsr_cli.pixels import unit_from_samples

# 2**30 input pixels (a 32768 x 32768 image): far above any camera or scanner file, while a tiny file that
# claims more (a decompression bomb) is refused before a single row is decoded. Override with max_pixels.
DEFAULT_MAX_PIXELS = 2**30

# Formats we accept, recognised from their first bytes (never from the name) and mapped to the libvips loader
# called by name. Calling the loader directly keeps libvips from trying its other, less hardened loaders
# (matrix, CSV, FITS, vips) on arbitrary files, and from parsing "[options]" out of the file name.
_LOADERS = {
    "png": "pngload",
    "jpeg": "jpegload",
    "tiff": "tiffload",
    "webp": "webpload",
    "gif": "gifload",
    "avif": "heifload",
    "heif": "heifload",
}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

# libvips colour spaces that are not RGB or grey and are converted to sRGB on read.
_CONVERTED_INTERPRETATIONS = {"lab", "labq", "labs", "lch", "cmc", "xyz", "yxy", "hsv", "oklab", "oklch"}

_GENERIC_VIPS_LINES = ("unable to call", "unable to fetch from region", "unable to write to memory")


@dataclass(frozen=True)
class ImageInfo:
    """What the reader delivers: the size and layout of the upright, converted pixels, and the metadata."""

    path: Path
    width: int
    height: int
    color_channels: int  # 1 (grey) or 3 (RGB)
    has_alpha: bool
    bit_depth: int  # 8 or 16
    format: str  # "png", "jpeg", "tiff", "webp", "gif", "avif" or "heif"
    # blobs are left out of repr, which stays one readable line
    icc: bytes | None = field(default=None, repr=False)  # only a profile fitting the channels (GRAY or RGB)
    exif: bytes | None = field(default=None, repr=False)  # orientation reset to 1: the pixels are upright
    xmp: bytes | None = field(default=None, repr=False)
    pages: int = 1  # pages (TIFF), frames (GIF, WebP, PNG) or images (HEIF) in the file; the first is read
    iptc: bytes | None = field(default=None, repr=False)  # IPTC-IIM records (caption, copyright ...)
    comments: tuple[bytes, ...] = field(default=(), repr=False)  # JPEG COM segments, as written
    # PNG colour (gAMA, cHRM, sRGB) and text (tEXt, zTXt, iTXt) chunks as (type, payload), in file order
    png_chunks: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)
    unread: tuple[str, ...] = ()  # metadata left out on reading, in words (text beyond the size kept)

    @property
    def page_word(self) -> str:
        """What a page of this format is called: "page" (TIFF), "frame" (GIF, WebP, PNG) or "image"."""
        return {"tiff": "page", "gif": "frame", "webp": "frame", "png": "frame"}.get(self.format, "image")

    @property
    def metadata(self) -> dict:
        """The metadata as ImageWriter's keywords: icc, exif, xmp, iptc, comments, png_chunks."""
        return {
            "icc": self.icc,
            "exif": self.exif,
            "xmp": self.xmp,
            "iptc": self.iptc,
            "comments": self.comments,
            "png_chunks": self.png_chunks,
        }

    @property
    def channels(self) -> int:
        """Channels per pixel in the arrays: colour channels plus one for alpha."""
        return self.color_channels + int(self.has_alpha)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(path: Path) -> str | None:
    """The image format from the file's first bytes, or None when it is not one we read."""
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp":
        brands = {head[i : i + 4] for i in range(8, len(head) - 3, 4)}  # major brand and compatible ones
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heif"
    return None


def vips_error_detail(error: pyvips.Error, fallback: str = "invalid or corrupt data") -> str:
    """The most specific line of a libvips error, for a one-line message."""
    lines = [line.strip() for line in f"{error.message}\n{error.detail or ''}".splitlines()]
    useful = [line for line in lines if line and not line.startswith(_GENERIC_VIPS_LINES)]
    return useful[-1] if useful else fallback


def _count(pixels: int) -> str:
    """`1,234 pixels`, with megapixels added where they say more."""
    return f"{pixels:,} pixels" + (f" ({pixels / 1e6:.1f} megapixels)" if pixels >= 1_000_000 else "")


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as error:
        raise InputError(f"{path}: cannot open ({error.strerror or error})") from None
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")


class _EndedJpeg(pyvips.SourceCustom):
    """A JPEG file followed by the end-of-image marker it lacks, for libvips to read."""

    def __init__(self, path: Path):
        super().__init__()
        self._handle = open(path, "rb")
        self._size = os.fstat(self._handle.fileno()).st_size
        self._position = 0
        self.on_read(self._read)
        self.on_seek(self._seek)

    def _read(self, length: int) -> bytes:
        if self._position < self._size:
            self._handle.seek(self._position)
            data = self._handle.read(min(length, self._size - self._position))
        else:
            start = self._position - self._size
            data = JPEG_EOI[start : start + length]
        self._position += len(data)
        return data

    def _seek(self, offset: int, whence: int) -> int:
        start = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size + len(JPEG_EOI)}
        self._position = max(0, start[whence] + offset)
        return self._position


def _load(path: Path, image_format: str, access: str, source: _EndedJpeg | None = None) -> pyvips.Image:
    """Open with libvips (header only); from `source` instead of the file for a JPEG lacking its end marker
    (the caller keeps `source` alive while the image is read)."""
    try:
        if source is not None:
            # any warning fails: with the marker supplied, a warning means the image data is cut short
            return pyvips.Operation.call("jpegload_source", source, access=access, fail_on="warning")
        # revalidate: never serve a cached decode of a file that has since been replaced
        return pyvips.Operation.call(
            _LOADERS[image_format], os.fspath(path), access=access, fail_on="error", revalidate=True
        )
    except pyvips.Error as error:
        raise InputError(f"{path}: cannot read {image_format} header ({vips_error_detail(error)})") from None


def _orientation(image: pyvips.Image) -> int:
    if image.get_typeof("orientation") == 0:
        return 1
    orientation = image.get("orientation")
    return orientation if 1 <= orientation <= 8 else 1


def _blob(image: pyvips.Image, name: str) -> bytes | None:
    if image.get_typeof(name) == 0:
        return None
    value = image.get(name)
    return bytes(value) if value else None


class ImageReader:
    """An opened image: `info` is known at once, pixels come from `strips()` or `read_all()`.

    Each call to `strips()` or `read_all()` decodes the file afresh, so an image can be read more than once.
    """

    def __init__(self, path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.max_pixels = max_pixels
        _check_readable_file(self.path)
        try:
            image_format = sniff_format(self.path)
        except OSError as error:
            raise InputError(f"{self.path}: cannot read ({error.strerror or error})") from None
        if image_format is None:
            raise InputError(
                f"{self.path}: not a supported image (PNG, JPEG, TIFF, WebP, GIF, AVIF/HEIF are read)"
            )
        self._format = image_format
        try:
            png = read_png_extras(self.path) if image_format == "png" else PngExtras()
            jpeg = read_jpeg_extras(self.path) if image_format == "jpeg" else JpegExtras()
        except OSError as error:
            raise InputError(f"{self.path}: cannot read ({error.strerror or error})") from None
        self._add_end = not jpeg.has_end
        self._sources: list[_EndedJpeg] = []  # alive as long as the reader: libvips reads through them
        # Rotated files need random access; that choice is made once from the header and kept.
        header = self._load("sequential")
        self._check_size(header.width, header.height)
        self._access = "sequential" if _orientation(header) == 1 else "random"
        image = self._pipeline(header if self._access == "sequential" else None)
        pages = header.get("n-pages") if header.get_typeof("n-pages") != 0 else png.frames
        self.info = replace(
            self._describe(image),
            pages=max(1, int(pages)),
            iptc=iptc_records(_blob(header, "iptc-data")),
            comments=jpeg.comments,
            png_chunks=png.chunks,
            unread=png.unread,
        )
        # The pipeline built here serves the first read; later reads start from the file again.
        self._pending: pyvips.Image | None = image

    # -- set-up -------------------------------------------------------------------------------------------

    def _check_size(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise InputError(f"{self.path}: image has no pixels ({width}x{height})")
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise InputError(
                f"{self.path}: {width}x{height} is {_count(width * height)}, over the limit of "
                f"{_count(self.max_pixels)}; if the file is trusted, raise the limit with --max-pixels "
                "(a number of pixels)"
            )

    def _load(self, access: str) -> pyvips.Image:
        if not self._add_end:
            return _load(self.path, self._format, access)
        source = _EndedJpeg(self.path)
        self._sources.append(source)
        return _load(self.path, self._format, access, source)

    def _pipeline(self, loaded: pyvips.Image | None = None) -> pyvips.Image:
        """Build the lazy libvips pipeline: load, rotate upright, convert colours. Nothing is decoded yet."""
        image = loaded if loaded is not None else self._load(self._access)
        try:
            if _orientation(image) != 1:
                image = image.autorot()
            image = self._to_rgb_or_grey(image)
        except pyvips.Error as error:
            raise InputError(f"{self.path}: cannot convert colours ({vips_error_detail(error)})") from None
        return image

    def _to_rgb_or_grey(self, image: pyvips.Image) -> pyvips.Image:
        interpretation = image.interpretation
        sixteen_bit = image.format in ("ushort", "short")
        if interpretation == "cmyk":
            if image.get_typeof("icc-profile-data") != 0:
                return image.icc_transform("srgb", embedded=True, depth=16 if sixteen_bit else 8)
            return image.colourspace("rgb16" if sixteen_bit else "srgb")  # libvips' built-in CMYK profile
        if interpretation in _CONVERTED_INTERPRETATIONS or image.coding != "none":
            return image.colourspace("rgb16" if sixteen_bit else "srgb")
        return image

    def _describe(self, image: pyvips.Image) -> ImageInfo:
        if image.format == "uchar":
            bit_depth = 8
        elif image.format == "ushort":
            bit_depth = 16
        else:
            raise InputError(
                f"{self.path}: {image.format} samples are not supported; convert the image to 8 or 16 bits"
            )
        if image.bands not in (1, 2, 3, 4):
            raise InputError(
                f"{self.path}: {image.bands} channels per pixel; "
                "only grey, grey+alpha, RGB and RGBA are supported"
            )
        color_channels = 1 if image.bands <= 2 else 3
        icc = _blob(image, "icc-profile-data")
        return ImageInfo(
            path=self.path,
            width=image.width,
            height=image.height,
            color_channels=color_channels,
            has_alpha=image.bands in (2, 4),
            bit_depth=bit_depth,
            format=self._format,
            icc=icc if icc_fits(icc, color_channels) else None,
            exif=upright_exif(_blob(image, "exif-data")),
            xmp=upright_xmp(_blob(image, "xmp-data")),
        )

    def _take_pipeline(self) -> pyvips.Image:
        image, self._pending = self._pending, None
        if image is None:
            image = self._pipeline()
            if (image.width, image.height, image.bands) != (
                self.info.width,
                self.info.height,
                self.info.channels,
            ):
                raise InputError(f"{self.path}: the file changed since it was opened")
        return image

    # -- pixels -------------------------------------------------------------------------------------------

    def _to_float(self, raw: bytes, rows: int) -> np.ndarray:
        dtype = np.uint8 if self.info.bit_depth == 8 else np.uint16
        samples = np.frombuffer(raw, dtype=dtype).reshape(rows, self.info.width, self.info.channels)
        return unit_from_samples(samples)

    def strips(self, rows: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (y0, strip) top to bottom: float32 arrays (h, width, channels) in [0, 1], h <= rows.

        Strips are consecutive and do not overlap; together they cover the image exactly.
        Raises InputError when the data turn out truncated or corrupt part way.
        """
        if rows < 1:
            raise ValueError(f"rows must be positive, got {rows}")
        image = self._take_pipeline()
        region = pyvips.Region.new(image)
        width, height = self.info.width, self.info.height
        for y0 in range(0, height, rows):
            strip_rows = min(rows, height - y0)
            try:
                raw = region.fetch(0, y0, width, strip_rows)
            except pyvips.Error as error:
                raise InputError(
                    f"{self.path}: truncated or corrupt image data near row {y0} ({vips_error_detail(error)})"
                ) from None
            yield y0, self._to_float(raw, strip_rows)

    def read_all(self) -> np.ndarray:
        """The whole image as one float32 array (height, width, channels) in [0, 1]. For small images."""
        image = self._take_pipeline()
        try:
            raw = image.write_to_memory()
        except pyvips.Error as error:
            raise InputError(
                f"{self.path}: truncated or corrupt image data ({vips_error_detail(error)})"
            ) from None
        return self._to_float(raw, self.info.height)


def open_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageReader:
    """Open an image for streamed reading; only the header is decoded here.

    Raises InputError for a missing or unreadable file, a folder, something that is not a supported image,
    or an image over `max_pixels` pixels (None: no limit).
    """
    return ImageReader(path, max_pixels=max_pixels)


def read_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convenience: the whole image as float32 (H, W, C) in [0, 1]."""
    return open_image(path, max_pixels=max_pixels).read_all()
