"""Streamed, atomic image writing.

How a file is made (memory stays bounded by one TIFF strip, whatever the image height):
1. Strips are quantised to 8 or 16 bits and appended to a TIFF with tifffile as they arrive (BigTIFF when the
   pixel data exceed 2 GiB). The TIFF lives under a hidden temporary name in the output folder.
2. For TIFF output that file is the result: Adobe Deflate at zlib level 1 with the horizontal predictor.
   Level 1 runs at about 90 MB/s on one core and keeps most of the gain (about 45% smaller on photographs);
   higher levels cost several times the time for a few percent.
   For PNG, JPEG and WebP output the TIFF is uncompressed (tifffile lays out its header first) and libvips,
   in a thread of its own, encodes the target format from it while it is being written, reading each strip
   once it is in (`_StripFeed`); on very wide images (ENCODER_BUDGET) it starts when the TIFF is complete.
   The TIFF is deleted at the end. WebP is the exception to flat memory: libwebp encodes a whole picture at
   once, which its 16383-pixel side limit bounds to about 1 GiB.
3. On success the finished file is given the output name (atomic within a folder). On any exception,
   KeyboardInterrupt included, every temporary file is removed and nothing appears at the output path.

Files under construction (step 1 and 2) are the project's one kind of temporary file (`files.PartFile`),
unnamed where the system allows (Linux: O_TMPFILE, linked into place through /proc/self/fd at the end): if
the process dies before, even by SIGKILL, the kernel frees them and the folder holds no partial file.
Elsewhere they have hidden names (`.NAME.XXXXXXXX.classsr-part.EXT`) and are removed on any exception; the
CLI turns SIGTERM and SIGHUP into one, so only a SIGKILL (or a power cut) can leave such a file there.

Metadata goes into the TIFF (TIFF output) or is handed to libvips with the pixels (the other formats). What
goes into which format, and what a format cannot hold (`ImageWriter.dropped`), is decided in formats.py; PNG
chunks and JPEG comments, which libvips does not write as read, are put into its output by insertion.py.
"""

from __future__ import annotations

import os
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import pyvips
import tifffile

from classsr_cli.errors import OVERWRITE_HINT, OutputError
from classsr_cli.files import PartFile
from classsr_cli.imaging.formats import EIGHT_BIT_ONLY, FORMAT_NAMES, MAX_SIDE, output_format, plan_metadata
from classsr_cli.imaging.insertion import InsertingTarget, png_chunk
from classsr_cli.imaging.output_metadata import iptc_for_jpeg
from classsr_cli.imaging.reader import vips_error_detail
from classsr_cli.pixels import samples_from_unit

DEFAULT_QUALITY = 95  # JPEG and WebP: near-transparent quality; an upscaler should not add visible artefacts
DEFAULT_DPI = 72.0  # the conventional "unknown" resolution, written when the caller gives none
PNG_COMPRESSION = 3  # zlib level: near level-6 size at a fraction of its time (docs/formats.md)
PNG_FILTER = "up"  # one row filter for every row: the adaptive choice's size within 2%, 40% faster
TIFF_DEFLATE_LEVEL = 1
_STRIP_BYTES = 512 * 1024  # TIFF strip size: small enough for flat memory, large enough for few strips
# libvips encodes from buffers of about this many image rows (80000-pixel 8-bit RGB rows took 180 MB); where
# they would pass ENCODER_BUDGET, the encoder waits for the whole image rather than add them to the engine's
ENCODER_ROWS = 768
ENCODER_BUDGET = 64 * 2**20
_BIGTIFF_BYTES = 2**31  # classic TIFF offsets are 32-bit; many readers already stumble past 2 GiB
_TIFF_XMP_TAG = 700
_TIFF_IPTC_TAG = 33723
_TIFF_BYTE, _TIFF_UNDEFINED = 1, 7
# Unnamed files under construction where the system has them (see the module docstring); tests turn it off to
# exercise the named fallback.
UNNAMED_TEMP_FILES = sys.platform.startswith("linux") and hasattr(os, "O_TMPFILE")
_PART_SUFFIX = ".classsr-part"  # hidden names: .NAME.XXXXXXXX.classsr-part.EXT


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


class ImageWriter:
    """Write an image strip by strip; the file appears at `path` only when the with-block ends normally.

    with ImageWriter(out, width, height, channels=3, bit_depth=8, icc=info.icc, exif=info.exif,
                     protect=[input_path]) as writer:
        writer.write(strips)   # float arrays (h, width, channels) in [0, 1], top to bottom, any heights

    `channels` counts alpha (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA); alpha is the last channel. JPEG and WebP
    are written at 8 bits whatever `bit_depth` says; JPEG has no alpha, so alpha is flattened onto white.
    Strips may also be uint8 (bit_depth 8) or uint16 (bit_depth 16) arrays, written as they are.

    Metadata, as the reader's ImageInfo.metadata gives it: `icc`, `exif`, `xmp` (blobs), `iptc` (IPTC-IIM
    records), `comments` (JPEG COM payloads), `png_chunks` (PNG colour and text chunks as (type, payload)).
    `dropped` lists, in words, what of it the output format cannot hold (e.g. "IPTC (PNG has no place for
    it)"); it is known once the writer is made, before any work.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        channels: int = 3,
        bit_depth: int = 8,
        has_alpha: bool | None = None,
        *,
        icc: bytes | None = None,
        exif: bytes | None = None,
        xmp: bytes | None = None,
        iptc: bytes | None = None,
        comments: Iterable[bytes] = (),
        png_chunks: Iterable[tuple[bytes, bytes]] = (),
        overwrite: bool = False,
        protect: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] = (),
        quality: int = DEFAULT_QUALITY,
        dpi: float | None = None,
    ):
        self.path = Path(path)
        self.format = output_format(self.path)
        if int(width) != width or int(height) != height or width < 1 or height < 1:
            raise ValueError(f"image size must be positive integers, got {width}x{height}")
        if channels not in (1, 2, 3, 4):
            raise ValueError(f"channels must be 1, 2, 3 or 4, got {channels}")
        if has_alpha is None:
            has_alpha = channels in (2, 4)
        elif has_alpha != (channels in (2, 4)):
            raise ValueError(f"{channels} channels {'cannot' if has_alpha else 'must'} include alpha")
        if bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be within 1..100, got {quality}")
        self.width, self.height, self.channels = int(width), int(height), channels
        self.has_alpha = has_alpha
        self.color_channels = channels - int(has_alpha)
        self.bit_depth = 8 if self.format in EIGHT_BIT_ONLY else bit_depth
        self.quality = quality
        self.dpi = float(dpi) if dpi else DEFAULT_DPI
        self.overwrite = overwrite
        picture = (self.width, self.height, self.color_channels, self.dpi)
        plan = plan_metadata(self.format, *picture, icc, exif, xmp, iptc, list(comments), list(png_chunks))
        self.dropped = plan.dropped  # what of the metadata the format cannot hold, in words
        # what of the pixels the format cannot hold as they are, in words
        self.converted: list[str] = []
        name = FORMAT_NAMES[self.format]
        if bit_depth == 16 and self.bit_depth == 8:
            self.converted.append(f"16-bit samples written at 8 bits ({name} holds 8)")
        if has_alpha and self.format == "jpeg":
            self.converted.append("alpha flattened onto white (JPEG has no alpha)")
        self.icc, self.exif, self.xmp, self.iptc = plan.icc, plan.exif, plan.xmp, plan.iptc
        self.png_chunks, self.jpeg_segments = plan.png_chunks, plan.jpeg_segments

        max_side = MAX_SIDE[self.format]
        if max(self.width, self.height) > max_side:
            raise OutputError(
                f"{self.path}: {self.width}x{self.height} is too large for {self.format.upper()} "
                f"(at most {max_side} pixels per side); write PNG or TIFF instead"
            )
        if isinstance(protect, (str, os.PathLike)):
            protect = [protect]
        self._check_destination([Path(p) for p in protect])

        self._parts: list[PartFile] = []
        self._finished: PartFile | None = None  # the file holding the complete result
        self._write_started = False
        self._source_failed = False
        self._closed = False

    @property
    def encodes_after_writing(self) -> bool:
        """True where the encoder starts only once every strip has been written: PNG, JPEG or WebP output so
        wide that the encoder's buffers (ENCODER_ROWS rows) would pass ENCODER_BUDGET. Memory its producer
        frees before the last strip then lowers the peak; otherwise the encoder is running by then."""
        if self.format == "tiff":
            return False
        dtype = self._tiff_layout()[0]
        return ENCODER_ROWS * self.width * self.channels * dtype.itemsize > ENCODER_BUDGET

    # -- destination checks and temporary files -----------------------------------------------------------

    def _check_destination(self, protected: list[Path]) -> None:
        parent = self.path.parent
        if not parent.exists():
            raise OutputError(f"{self.path}: the folder {parent} does not exist")
        if not parent.is_dir():
            raise OutputError(f"{self.path}: {parent} is not a folder")
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a folder")
        for input_path in protected:
            if _same_file(self.path, input_path):
                raise OutputError(f"{self.path}: is the input image; it is never overwritten")
        if self.path.exists() and not self.overwrite:
            raise OutputError(f"{self.path}: already exists: {OVERWRITE_HINT} to replace it")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"{self.path}: the folder {parent} is not writable")

    def _reserve_temp(self, suffix: str) -> PartFile:
        try:
            part = PartFile(self.path, _PART_SUFFIX + suffix, unnamed=UNNAMED_TEMP_FILES)
        except OSError as error:
            raise OutputError(
                f"{self.path}: cannot create a file in {self.path.parent} ({error.strerror or error})"
            ) from error
        self._parts.append(part)
        return part

    def _discard(self) -> None:
        for part in self._parts:
            part.discard()
        self._parts.clear()
        self._finished = None

    # -- context manager ----------------------------------------------------------------------------------

    def __enter__(self) -> ImageWriter:
        # Reserve the temporary file now: an unwritable folder is reported before any work is done.
        if not self._parts:
            self._reserve_temp(".tif")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not leave temporary files behind.
        try:
            if not self._closed:
                self._discard()
        except Exception:
            pass

    def abort(self) -> None:
        """Remove every temporary file; nothing is written at the output path."""
        self._discard()
        self._closed = True

    def close(self) -> None:
        """Move the finished file onto the output path. Called by the with-block on normal exit."""
        if self._closed:
            return
        if self._finished is None:
            self.abort()
            raise RuntimeError(f"{self.path}: closed before write() delivered all {self.height} rows")
        try:
            self._finished.publish(self.overwrite)
        except FileExistsError:
            self.abort()
            raise OutputError(f"{self.path}: already exists: {OVERWRITE_HINT} to replace it") from None
        except OSError as error:
            self.abort()
            raise OutputError(f"{self.path}: cannot move the finished file into place ({error})") from error
        except BaseException:
            self.abort()
            raise
        self._discard()
        self._closed = True

    # -- writing ------------------------------------------------------------------------------------------

    def write(self, strips: Iterable[np.ndarray]) -> None:
        """Write the whole image from `strips`, top to bottom; call once.

        Exceptions from `strips` itself propagate unchanged (and the output is abandoned); failures to write
        (disk full, encoder errors) become OutputError.
        """
        if self._closed or self._write_started:
            raise RuntimeError("write() is called once per ImageWriter")
        self._write_started = True
        try:
            if not self._parts:
                self._reserve_temp(".tif")
            tiff = self._parts[0]
            if self.format == "tiff":
                self._write_tiff(tiff, strips)
                self._finished = tiff
            else:
                self._finished = self._write_converted(tiff, strips)
        except OSError as error:
            self.abort()
            if self._source_failed:
                raise
            raise OutputError(f"{self.path}: cannot write ({error.strerror or error})") from error
        except BaseException:
            self.abort()
            raise

    def _samples(self, strip: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """One strip as integer samples of `dtype` (`pixels.samples_from_unit`: rounded half up, clipped)."""
        array = np.asarray(strip)
        if array.ndim == 2 and self.channels == 1:
            array = array[:, :, np.newaxis]
        if array.ndim != 3 or array.shape[1:] != (self.width, self.channels):
            raise ValueError(
                f"strip shape {array.shape} does not fit a {self.width}-pixel wide image with "
                f"{self.channels} channels: expected (rows, width, channels)"
            )
        if array.dtype == dtype:
            return array
        if array.dtype.kind != "f":
            raise TypeError(f"strips must be float arrays in [0, 1] (or {dtype.name}), got {array.dtype}")
        return samples_from_unit(array, dtype)

    def _encoded_strips(
        self, strips: Iterable[np.ndarray], dtype: np.dtype, rows_per_strip: int, compress: bool
    ) -> Iterator[bytes]:
        """Regroup strips of any height into TIFF strips of `rows_per_strip` rows, encoded as bytes."""
        buffer = np.empty((rows_per_strip, self.width, self.channels), dtype=dtype)
        filled = 0
        rows_seen = 0
        source = iter(strips)
        while True:
            try:
                strip = next(source)
            except StopIteration:
                break
            except BaseException:
                self._source_failed = True
                raise
            samples = self._samples(strip, dtype)
            rows = samples.shape[0]
            if rows_seen + rows > self.height:
                raise ValueError(f"strips deliver more than the image's {self.height} rows")
            rows_seen += rows
            taken = 0
            while taken < rows:
                # A full strip is flushed only once more rows arrive, so the last strip is handed over after
                # the source is exhausted and its row count has been checked.
                if filled == rows_per_strip:
                    yield self._encode(buffer, compress)
                    filled = 0
                count = min(rows_per_strip - filled, rows - taken)
                buffer[filled : filled + count] = samples[taken : taken + count]
                filled += count
                taken += count
        if rows_seen != self.height:
            raise ValueError(f"strips delivered {rows_seen} of the image's {self.height} rows")
        yield self._encode(buffer[:filled], compress)

    @staticmethod
    def _encode(samples: np.ndarray, compress: bool) -> bytes:
        if not compress:
            return samples.tobytes()
        # TIFF horizontal predictor: each sample minus its left neighbour, wrapping like the integer type
        differences = samples.copy()
        differences[:, 1:] -= samples[:, :-1]
        return zlib.compress(differences, TIFF_DEFLATE_LEVEL)

    def _tiff_layout(self) -> tuple[np.dtype, int, tuple[int, ...]]:
        """(sample type, rows per TIFF strip, array shape) of the TIFF this writer makes."""
        dtype = np.dtype("<u1") if self.bit_depth == 8 else np.dtype("<u2")
        row_bytes = self.width * self.channels * dtype.itemsize
        rows_per_strip = max(1, min(self.height, _STRIP_BYTES // row_bytes))
        shape = (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)
        return dtype, rows_per_strip, shape

    def _tiff_tags(self, final: bool, rows_per_strip: int) -> dict:
        """tifffile's keywords for this writer's TIFF: the final one (TIFF output: deflate, metadata) or the
        uncompressed one libvips converts (which gets the metadata from libvips instead)."""
        extratags = []
        if final and self.xmp:
            extratags.append((_TIFF_XMP_TAG, _TIFF_BYTE, len(self.xmp), self.xmp, True))
        if final and self.iptc:
            extratags.append((_TIFF_IPTC_TAG, _TIFF_UNDEFINED, len(self.iptc), self.iptc, True))
        return dict(
            photometric="rgb" if self.color_channels == 3 else "minisblack",
            planarconfig="contig" if self.channels > 1 else None,
            extrasamples=("unassalpha",) if self.has_alpha else None,
            rowsperstrip=rows_per_strip,
            compression="adobe_deflate" if final else None,
            predictor="horizontal" if final else None,
            iccprofile=self.icc if final else None,
            extratags=extratags,
            resolution=(self.dpi, self.dpi),
            resolutionunit="inch",
            software="classsr",
            metadata=None,  # no tifffile JSON description
        )

    def _bigtiff(self, dtype: np.dtype) -> bool:
        return self.height * self.width * self.channels * dtype.itemsize > _BIGTIFF_BYTES

    def _write_tiff(self, part: PartFile, strips: Iterable[np.ndarray]) -> None:
        """The final TIFF (TIFF output), compressed strip by strip as the strips arrive."""
        dtype, rows_per_strip, shape = self._tiff_layout()
        # a file object: tifffile would resolve a /proc/self/fd path to a new file of its own
        with (
            open(part.io_path, "r+b") as handle,
            tifffile.TiffWriter(handle, bigtiff=self._bigtiff(dtype), byteorder="<") as tiff,
        ):
            tiff.write(
                self._encoded_strips(strips, dtype, rows_per_strip, compress=True),
                shape=shape,
                dtype=dtype,
                **self._tiff_tags(final=True, rows_per_strip=rows_per_strip),
            )

    def _write_converted(self, tiff: PartFile, strips: Iterable[np.ndarray]) -> PartFile:
        """PNG, JPEG or WebP: the strips go into an uncompressed TIFF in `tiff` (its header laid out first by
        tifffile), which libvips encodes, in a thread of its own, as they arrive (`_StripFeed`); where its
        buffers would be large (ENCODER_ROWS x a row > ENCODER_BUDGET), the encoder starts once the TIFF is
        complete instead, so that they do not add to the engine's memory. Returns the finished target;
        encoder failures become OutputError."""
        dtype, rows_per_strip, shape = self._tiff_layout()
        with open(tiff.io_path, "r+b") as handle:
            with tifffile.TiffWriter(handle, bigtiff=self._bigtiff(dtype), byteorder="<") as writer:
                offset, size = writer.write(
                    None,
                    shape=shape,
                    dtype=dtype,
                    returnoffset=True,
                    **self._tiff_tags(final=False, rows_per_strip=rows_per_strip),
                )
            target = self._reserve_temp(self.path.suffix.lower())
            feed = _StripFeed(tiff.fd, offset, size)
            failure: list[BaseException] = []
            # the encoder's end: Thread.join interrupted by Ctrl-C marks a running thread as stopped
            # (Python 3.11), so it is waited for by an event of its own
            ended = threading.Event()

            def encode() -> None:
                try:
                    image = pyvips.Image.new_from_source(
                        feed.source, "", access="sequential", fail_on="error"
                    )
                    self._encode_image(image, target)
                except BaseException as error:  # raised in the writing thread
                    failure.append(error)
                finally:
                    feed.reader_done()
                    ended.set()

            encoder = threading.Thread(target=encode, name="classsr-encoder", daemon=True)
            early = not self.encodes_after_writing
            if early:
                encoder.start()
            try:
                handle.seek(offset)
                for chunk in self._encoded_strips(strips, dtype, rows_per_strip, compress=False):
                    handle.write(chunk)
                    handle.flush()
                    if not feed.arrived(len(chunk)):  # the encoder stopped: its error is raised below
                        break
                else:
                    feed.finish()
                if not early:
                    encoder.start()
                ended.wait()
            except BaseException:  # Ctrl-C included, also while the encoder finishes
                feed.abort()
                if encoder.ident is not None:  # started
                    ended.wait()  # soon: libvips reads the end of its input and fails
                raise
        self._parts.remove(tiff)
        tiff.discard()
        if failure:
            error = failure[0]
            if isinstance(error, pyvips.Error):
                detail = vips_error_detail(error, "libvips failed")
                if os.fstatvfs(target.fd).f_bavail == 0:  # libvips' PNG writer does not say why it failed
                    detail = f"No space left on device; {detail}"
                raise OutputError(f"{self.path}: cannot write {self.format} ({detail})") from None
            raise error
        return target

    def _encode_image(self, image: pyvips.Image, target: PartFile) -> None:
        """Save `image` (the picture as the intermediate TIFF holds it) in the target format into `target`,
        with this writer's metadata."""
        if self.format == "jpeg" and self.has_alpha:
            image = image.flatten(background=[255] * self.color_channels).cast("uchar")
        pixels_per_mm = self.dpi / 25.4
        image = image.copy(xres=pixels_per_mm, yres=pixels_per_mm)
        for name in ("icc-profile-data", "exif-data", "xmp-data", "iptc-data", "image-description"):
            if image.get_typeof(name) != 0:
                image.remove(name)
        iptc = iptc_for_jpeg(self.iptc) if self.iptc and self.format == "jpeg" else None
        for name, blob in (
            ("icc-profile-data", self.icc),
            ("exif-data", self.exif),
            ("xmp-data", self.xmp),
            ("iptc-data", iptc),
        ):
            if blob:
                image.set_type(pyvips.GValue.blob_type, name, blob)
        if self.format == "png":
            options = {"compression": PNG_COMPRESSION, "filter": PNG_FILTER}
        else:
            options = {"Q": self.quality}
        inserted = b"".join(png_chunk(kind, payload) for kind, payload in self.png_chunks) + b"".join(
            self.jpeg_segments
        )
        if inserted:
            destination = InsertingTarget(target.fd, self.format, inserted)
            try:
                pyvips.Operation.call(f"{self.format}save_target", image, destination, **options)
            finally:
                destination.check()  # a write error (disk full) is reported as it was
        elif target.path is None:  # unnamed: libvips writes through the descriptor
            destination = pyvips.Target.new_to_descriptor(target.fd)
            pyvips.Operation.call(f"{self.format}save_target", image, destination, **options)
        else:
            pyvips.Operation.call(f"{self.format}save", image, target.io_path, **options)


class _StripFeed:
    """A file being written as a libvips source (`source`): reads wait for the bytes the writing thread has
    reported (`arrived`), from `offset` on; those before `offset` (the TIFF's header) are there from the
    start. After `abort` every read finds the end, so libvips fails at once rather than waits or goes on.
    """

    def __init__(self, fd: int, offset: int, size: int):
        self._fd = fd
        self._total = offset + size
        self._end = offset  # bytes [0, _end) are in the file
        self._position = 0  # the reader's
        self._closed = False  # finished or aborted: no more bytes come
        self._aborted = False
        self._reader_gone = False
        self._ready = threading.Condition()
        self.source = pyvips.SourceCustom()
        self.source.on_read(self._read)
        self.source.on_seek(self._seek)

    def arrived(self, count: int) -> bool:
        """`count` more bytes are in the file. False once the reader has stopped (an encoder error)."""
        with self._ready:
            self._end += count
            self._ready.notify_all()
            return not self._reader_gone

    def finish(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def abort(self) -> None:
        """The reader's next read finds the end of its input, wherever it is."""
        with self._ready:
            self._closed = self._aborted = True
            self._ready.notify_all()

    def reader_done(self) -> None:
        with self._ready:
            self._reader_gone = True

    def _read(self, size: int) -> bytes:
        with self._ready:
            while self._position >= self._end and not self._closed:
                self._ready.wait()
            count = 0 if self._aborted else max(0, min(size, self._end - self._position))
            position = self._position
        data = os.pread(self._fd, count, position) if count else b""
        self._position += len(data)
        return data

    def _seek(self, offset: int, whence: int) -> int:
        with self._ready:
            self._position = (0, self._position, self._total)[whence] + offset
            return self._position


def write_image(
    path: str | os.PathLike[str],
    array: np.ndarray,
    bit_depth: int = 8,
    overwrite: bool = True,
    **options,
) -> None:
    """Convenience: write a whole float (H, W[, C]) array in [0, 1] atomically.

    `options` are ImageWriter's keywords: icc, exif, xmp, iptc, comments, png_chunks, protect, quality, dpi,
    has_alpha.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {array.shape}")
    height, width, channels = array.shape
    with ImageWriter(
        path, width, height, channels=channels, bit_depth=bit_depth, overwrite=overwrite, **options
    ) as writer:
        writer.write([array])
