"""Streamed image reading and writing: formats, bit depths, colour spaces, metadata, safety."""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile

from classsr_cli.errors import InputError, OutputError
from classsr_cli.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageWriter,
    open_image,
    output_format,
    read_image,
    write_image,
)
from classsr_cli.imaging import writer as writer_module
from classsr_cli.imaging.metadata import exif_orientation, upright_exif, upright_xmp

RNG = np.random.default_rng(1234)
HEIGHT, WIDTH = 37, 23  # odd sizes: strips and TIFF strips never divide them evenly

INTERPRETATION = {(1, 8): "b-w", (2, 8): "b-w", (3, 8): "srgb", (4, 8): "srgb"}
INTERPRETATION.update({(1, 16): "grey16", (2, 16): "grey16", (3, 16): "rgb16", (4, 16): "rgb16"})


def random_samples(channels: int, bit_depth: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return RNG.integers(0, np.iinfo(dtype).max + 1, (height, width, channels)).astype(dtype)


def to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / np.iinfo(samples.dtype).max


def vips_image(samples: np.ndarray, interpretation: str | None = None, **blobs: bytes) -> pyvips.Image:
    """A libvips image from integer samples, made independently of the code under test."""
    bit_depth = 8 if samples.dtype == np.uint8 else 16
    image = pyvips.Image.new_from_array(samples)
    image = image.copy(interpretation=interpretation or INTERPRETATION[(samples.shape[2], bit_depth)])
    for name, blob in blobs.items():
        image.set_type(pyvips.GValue.blob_type, name.replace("_", "-"), blob)
    return image


def vips_open(path: Path) -> pyvips.Image:
    # revalidate: libvips would otherwise serve a file it opened before from its cache, even if replaced
    return pyvips.Image.new_from_file(str(path), revalidate=True)


def make_exif(orientation: int, make: bytes = b"ClassSRTestCam") -> bytes:
    """A minimal little-endian EXIF block: IFD0 with Make and Orientation."""
    make += b"\x00"
    entries = 2
    data_offset = 8 + 2 + 12 * entries + 4
    ifd = struct.pack("<H", entries)
    ifd += struct.pack("<HHII", 0x010F, 2, len(make), data_offset)  # Make, ASCII
    ifd += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)  # Orientation, SHORT
    ifd += struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + make


def builtin_profile(name: str) -> bytes:
    """An RGB ICC profile from libvips' built-in ones."""
    pixel = pyvips.Image.black(2, 2, bands=3).copy(interpretation="srgb")
    return pixel.icc_transform(name, input_profile="srgb").get("icc-profile-data")


def files_in(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}


@pytest.fixture(params=["unnamed", "named"])
def temp_files(request, monkeypatch):
    """Both ways the writer keeps files under construction: unnamed (Linux) and hidden named ones."""
    if request.param == "unnamed" and not writer_module.UNNAMED_TEMP_FILES:
        pytest.skip("unnamed temporary files (O_TMPFILE) exist on Linux only")
    monkeypatch.setattr(writer_module, "UNNAMED_TEMP_FILES", request.param == "unnamed")
    return request.param


# -- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_lossless_round_trip_keeps_every_sample(tmp_path, channels, bit_depth, suffix):
    samples = random_samples(channels, bit_depth)
    source = tmp_path / f"in{suffix}"
    vips_image(samples).write_to_file(str(source))

    reader = open_image(source)
    info = reader.info
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.color_channels == (1 if channels <= 2 else 3)
    assert info.has_alpha == (channels in (2, 4))
    assert info.bit_depth == bit_depth
    assert info.format == ("png" if suffix == ".png" else "tiff")
    pixels = reader.read_all()
    assert pixels.dtype == np.float32 and pixels.shape == (HEIGHT, WIDTH, channels)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0

    target = tmp_path / f"out{suffix}"
    write_image(target, pixels, bit_depth=info.bit_depth)
    written = vips_open(target)
    assert written.format == ("uchar" if bit_depth == 8 else "ushort")
    assert np.array_equal(written.numpy().reshape(samples.shape), samples)
    assert files_in(tmp_path) == {source.name, target.name}


def test_tiff_output_is_deflate_compressed_with_predictor(tmp_path):
    samples = random_samples(3, 16)
    target = tmp_path / "out.tiff"
    write_image(target, to_float(samples), bit_depth=16)
    with tifffile.TiffFile(target) as tiff:
        page = tiff.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.predictor == tifffile.PREDICTOR.HORIZONTAL
        assert np.array_equal(page.asarray(), samples)


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_lossy_round_trip_is_close(tmp_path, suffix):
    # smooth content, as photographs are; JPEG at quality 95 keeps it within a few levels
    ramp = np.linspace(0.0, 1.0, WIDTH, dtype=np.float32)
    pixels = np.stack(
        [np.tile(ramp, (HEIGHT, 1)), np.full((HEIGHT, WIDTH), 0.3), np.full((HEIGHT, WIDTH), 0.7)], 2
    )
    target = tmp_path / f"out{suffix}"
    write_image(target, pixels)
    reader = open_image(target)
    assert reader.info.bit_depth == 8 and reader.info.color_channels == 3
    assert np.abs(reader.read_all() - pixels).mean() < 0.02


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_sixteen_bit_becomes_eight_bit_with_rounding_for_jpeg_and_webp(tmp_path, suffix):
    level = 0.5  # 127.5 -> 128 when rounded, 127 when truncated
    target = tmp_path / f"out{suffix}"
    write_image(target, np.full((16, 16, 3), level, np.float32), bit_depth=16)
    written = vips_open(target)
    assert written.format == "uchar"
    assert np.all(np.abs(written.numpy().astype(int) - 128) <= 1)


def test_values_outside_range_and_nan_are_clipped(tmp_path):
    pixels = np.array([[[-0.5], [1.5], [np.nan], [np.inf], [0.4]]], np.float32)
    target = tmp_path / "out.png"
    write_image(target, pixels)
    assert vips_open(target).numpy().ravel().tolist() == [0, 255, 0, 255, 102]


def test_jpeg_output_flattens_alpha_onto_white(tmp_path):
    pixels = np.zeros((8, 8, 4), np.float32)  # black, fully transparent
    target = tmp_path / "out.jpg"
    write_image(target, pixels)
    written = vips_open(target)
    assert written.bands == 3 and written.numpy().min() >= 250


# -- strips --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 5, 16, HEIGHT, 256])
def test_strips_cover_the_image_exactly(tmp_path, rows):
    samples = random_samples(3, 8)
    source = tmp_path / "in.png"
    vips_image(samples).write_to_file(str(source))
    reader = open_image(source)
    expected_y0 = 0
    parts = []
    for y0, strip in reader.strips(rows=rows):
        assert y0 == expected_y0
        assert strip.dtype == np.float32 and strip.shape[1:] == (WIDTH, 3)
        assert 1 <= strip.shape[0] <= rows
        expected_y0 += strip.shape[0]
        parts.append(strip)
    assert expected_y0 == HEIGHT
    assert np.array_equal(np.concatenate(parts), reader.read_all())  # a second read works too
    assert np.array_equal(np.round(np.concatenate(parts) * 255).astype(np.uint8), samples)


def test_writer_accepts_strips_of_any_heights(tmp_path):
    samples = random_samples(4, 16)
    pixels = to_float(samples)
    cuts = [0, 1, 4, 5, 20, HEIGHT]
    target = tmp_path / "out.tif"
    with ImageWriter(target, WIDTH, HEIGHT, channels=4, bit_depth=16) as writer:
        writer.write(pixels[a:b] for a, b in zip(cuts, cuts[1:], strict=False))
    assert np.array_equal(tifffile.imread(target), samples)


# -- colour spaces -------------------------------------------------------------------------------------------


def cmyk_samples() -> np.ndarray:
    samples = np.zeros((4, 6, 4), np.uint8)  # C=M=Y=K=0: paper white
    samples[2:, :, 3] = 255  # full black ink
    return samples


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_becomes_rgb(tmp_path, suffix):
    source = tmp_path / f"cmyk{suffix}"
    vips_image(cmyk_samples(), "cmyk").write_to_file(str(source))
    reader = open_image(source)
    assert (reader.info.color_channels, reader.info.has_alpha) == (3, False)
    assert reader.info.icc is None or reader.info.icc[16:20] == b"RGB "
    pixels = reader.read_all()
    assert pixels.shape == (4, 6, 3)
    assert pixels[:2].min() > 0.9  # white stays white
    assert pixels[2:].max() < 0.35  # black ink is dark


def test_cmyk_with_embedded_profile_uses_it(tmp_path):
    rgb = vips_image(np.full((4, 4, 3), [200, 40, 40], np.uint8))
    cmyk = rgb.icc_transform("cmyk", input_profile="srgb")  # attaches the CMYK profile it used
    assert cmyk.get("icc-profile-data")[16:20] == b"CMYK"
    source = tmp_path / "cmyk_profile.tif"
    cmyk.tiffsave(str(source))
    reader = open_image(source)
    assert reader.info.icc is None or reader.info.icc[16:20] == b"RGB "
    assert np.abs(reader.read_all()[0, 0] * 255 - [200, 40, 40]).max() < 16


def test_palette_png_becomes_rgb(tmp_path):
    colours = np.array([[255, 0, 0], [0, 128, 255], [20, 200, 20], [250, 250, 250]], np.uint8)
    samples = colours[RNG.integers(0, 4, (HEIGHT, WIDTH))]
    source = tmp_path / "palette.png"
    vips_image(samples).pngsave(str(source), palette=True)
    assert vips_open(source).get("palette") == 1
    reader = open_image(source)
    assert (reader.info.color_channels, reader.info.has_alpha, reader.info.bit_depth) == (3, False, 8)
    assert np.abs(reader.read_all() * 255 - samples).max() <= 8


def test_lab_tiff_becomes_rgb(tmp_path):
    rgb = vips_image(np.full((4, 4, 3), [30, 120, 220], np.uint8))
    source = tmp_path / "lab.tif"
    rgb.colourspace("lab").tiffsave(str(source))
    reader = open_image(source)
    assert reader.info.color_channels == 3 and reader.info.bit_depth == 8
    assert np.abs(reader.read_all()[0, 0] * 255 - [30, 120, 220]).max() <= 2


def test_float_samples_are_refused(tmp_path):
    source = tmp_path / "float.tif"
    tifffile.imwrite(source, RNG.random((8, 8, 3), dtype=np.float32), photometric="rgb")
    with pytest.raises(InputError, match="float samples are not supported"):
        open_image(source)


# -- metadata ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix_in", [".png", ".jpg"])
@pytest.mark.parametrize("suffix_out", [".png", ".jpg", ".webp"])
def test_icc_and_exif_are_carried_over(tmp_path, suffix_in, suffix_out):
    profile = builtin_profile("p3")
    source = tmp_path / f"in{suffix_in}"
    vips_image(random_samples(3, 8), icc_profile_data=profile, exif_data=make_exif(1)).write_to_file(
        str(source)
    )
    reader = open_image(source)
    assert reader.info.icc == profile
    assert b"ClassSRTestCam" in reader.info.exif

    target = tmp_path / f"out{suffix_out}"
    write_image(target, reader.read_all(), icc=reader.info.icc, exif=reader.info.exif)
    written = vips_open(target)
    assert written.get("icc-profile-data") == profile
    assert b"ClassSRTestCam" in written.get("exif-data")


def test_tiff_output_carries_icc_and_xmp(tmp_path):
    profile = builtin_profile("p3")
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="1"/></x:xmpmeta>'
    target = tmp_path / "out.tif"
    write_image(target, to_float(random_samples(3, 8)), icc=profile, xmp=xmp)
    written = vips_open(target)
    assert written.get("icc-profile-data") == profile
    assert written.get("xmp-data") == xmp


def test_icc_that_does_not_fit_the_channels_is_dropped(tmp_path):
    target = tmp_path / "grey.png"
    write_image(target, np.full((4, 4, 1), 0.5, np.float32), icc=builtin_profile("srgb"))
    assert vips_open(target).get_typeof("icc-profile-data") == 0


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_6_is_read_upright_and_written_as_1(tmp_path, suffix):
    # orientation 6: the stored pixels must be turned 90 degrees clockwise for display
    samples = np.zeros((20, 30, 3), np.uint8)
    samples[:5, :10] = 255  # a white block at the stored top-left
    xmp = b'<rdf:Description tiff:Orientation="6"/><tiff:Orientation>6</tiff:Orientation>'
    source = tmp_path / f"rotated{suffix}"
    vips_image(samples, exif_data=make_exif(6), xmp_data=xmp).write_to_file(str(source))
    assert vips_open(source).get("orientation") == 6

    reader = open_image(source)
    assert (reader.info.width, reader.info.height) == (20, 30)
    assert exif_orientation(reader.info.exif) == 1
    assert b'Orientation="6"' not in reader.info.xmp and b">6<" not in reader.info.xmp
    pixels = reader.read_all()
    upright = np.rot90(samples, k=-1)
    assert np.abs(pixels * 255 - upright).mean() < 4  # JPEG: close; PNG: exact
    assert pixels[:10, -5:].mean() > 0.9 and pixels[:, :-5].mean() < 0.1

    target = tmp_path / "out.png"
    write_image(target, pixels, exif=reader.info.exif, xmp=reader.info.xmp)
    written = vips_open(target)
    assert (written.width, written.height) == (20, 30)
    assert written.get("orientation") == 1
    assert exif_orientation(written.get("exif-data")) == 1
    assert b'tiff:Orientation="1"' in written.get("xmp-data")
    assert open_image(target).read_all().shape == (30, 20, 3)  # not rotated again


def test_writer_resets_orientation_of_any_exif_it_is_given(tmp_path):
    target = tmp_path / "out.jpg"
    write_image(target, np.full((6, 9, 3), 0.5, np.float32), exif=make_exif(8))
    written = vips_open(target)
    assert (written.width, written.height, written.get("orientation")) == (9, 6, 1)


def test_metadata_helpers_handle_both_byte_orders_and_garbage():
    little = make_exif(6)
    assert exif_orientation(little) == 6 and exif_orientation(upright_exif(little)) == 1
    assert exif_orientation(upright_exif(little[6:])) == 1  # without the Exif prefix
    big = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, 3, 0) + b"\0\0\0\0"
    assert exif_orientation(big) == 3 and exif_orientation(upright_exif(big)) == 1
    assert upright_exif(b"not exif at all") is None
    assert upright_exif(b"") is None
    assert (
        upright_xmp(b"<tiff:Orientation> 8 </tiff:Orientation>") == b"<tiff:Orientation>1</tiff:Orientation>"
    )


# -- bad input -----------------------------------------------------------------------------------------------


def test_images_over_the_pixel_limit_are_refused(tmp_path):
    source = tmp_path / "in.png"
    vips_image(random_samples(3, 8)).write_to_file(str(source))
    with pytest.raises(InputError, match="over the limit"):
        open_image(source, max_pixels=HEIGHT * WIDTH - 1)
    assert open_image(source, max_pixels=HEIGHT * WIDTH).info.pixels == HEIGHT * WIDTH
    assert open_image(source, max_pixels=None).info.width == WIDTH


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_a_bomb_is_refused_from_its_header_alone(tmp_path):
    # claims 100000 x 100000 pixels, with only a few bytes of data: never decoded
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )
    assert 100_000 * 100_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(InputError, match="over the limit"):
        open_image(bomb)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_files_are_refused(tmp_path, suffix):
    source = tmp_path / f"in{suffix}"
    samples = random_samples(3, 8, height=96, width=64)
    if suffix == ".tif":
        tifffile.imwrite(source, samples, photometric="rgb", rowsperstrip=8)  # directory before the data
    else:
        vips_image(samples).write_to_file(str(source))
    data = source.read_bytes()
    source.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated|corrupt|cannot read"):
        reader = open_image(source)
        for _ in reader.strips(rows=16):
            pass


def test_truncated_file_raises_while_iterating_not_silently(tmp_path):
    source = tmp_path / "in.png"
    vips_image(random_samples(3, 8, height=200, width=64)).pngsave(str(source), compression=0)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    reader = open_image(source)  # the header is intact
    rows_read = 0
    with pytest.raises(InputError, match="truncated or corrupt"):
        for _, strip in reader.strips(rows=10):
            rows_read += strip.shape[0]
    assert 0 < rows_read < 200


def test_bad_inputs_give_one_line_input_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage_png = tmp_path / "garbage.png"
    garbage_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    cases = {
        tmp_path / "missing.png": "no such file",
        tmp_path: "is a folder",
        text: "not a supported image",
        empty: "empty file",
        garbage_png: "cannot read png",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as caught:
            read_image(path)
        assert "\n" not in str(caught.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_refused(tmp_path):
    source = tmp_path / "secret.png"
    vips_image(random_samples(3, 8)).write_to_file(str(source))
    source.chmod(0)
    try:
        with pytest.raises(InputError, match="permission denied"):
            open_image(source)
    finally:
        source.chmod(0o644)


# -- output safety -------------------------------------------------------------------------------------------


def test_output_format_from_extension():
    assert output_format("a.PNG") == "png"
    assert output_format("a.tif") == output_format("b.TIFF") == "tiff"
    assert output_format("a.jpg") == output_format("b.JPEG") == "jpeg"
    assert output_format("a.webp") == "webp"
    for bad in ["a.bmp", "a.ppm", "noextension", "a.png.txt"]:
        with pytest.raises(OutputError):
            output_format(bad)


def test_unknown_extension_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(OutputError, match="unknown extension"):
        ImageWriter(tmp_path / "out.bmp", 4, 4)
    assert files_in(tmp_path) == set()


def test_existing_output_is_replaced_only_with_overwrite(tmp_path, temp_files):
    target = tmp_path / "out.png"
    write_image(target, np.zeros((4, 4, 3), np.float32))
    before = target.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        ImageWriter(target, 4, 4, channels=3)
    with pytest.raises(OutputError, match="already exists"):
        write_image(target, np.ones((4, 4, 3), np.float32), overwrite=False)
    assert target.read_bytes() == before
    write_image(target, np.ones((4, 4, 3), np.float32), overwrite=True)
    assert read_image(target).min() == 1.0
    assert files_in(tmp_path) == {"out.png"}


def test_the_input_is_never_overwritten(tmp_path):
    source = tmp_path / "photo.png"
    vips_image(random_samples(3, 8)).write_to_file(str(source))
    (tmp_path / "sub").mkdir()
    for spelling in [source, tmp_path / "sub" / ".." / "photo.png"]:
        with pytest.raises(OutputError, match="is the input image"):
            ImageWriter(spelling, WIDTH, HEIGHT, overwrite=True, protect=[source])
    link = tmp_path / "link.png"
    link.symlink_to(source)
    with pytest.raises(OutputError, match="is the input image"):
        ImageWriter(link, WIDTH, HEIGHT, overwrite=True, protect=source)


def test_bad_output_folders_are_refused(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="does not exist"):
        ImageWriter(tmp_path / "missing" / "out.png", 4, 4)
    with pytest.raises(OutputError, match="is not a folder"):
        ImageWriter(a_file / "out.png", 4, 4)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        ImageWriter(tmp_path / "folder.png", 4, 4, overwrite=True)


def test_format_size_limits_are_checked_up_front(tmp_path):
    with pytest.raises(OutputError, match="too large for WEBP"):
        ImageWriter(tmp_path / "out.webp", 20_000, 10)
    with pytest.raises(OutputError, match="too large for JPEG"):
        ImageWriter(tmp_path / "out.jpg", 10, 70_000)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_an_exception_inside_the_writer_leaves_no_file(tmp_path, suffix, failure, temp_files):
    keep = tmp_path / "keep.txt"
    keep.write_text("x")
    target = tmp_path / f"out{suffix}"
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.float32)

    def failing_strips():
        yield pixels[:10]
        raise failure("stop")

    with pytest.raises(failure), ImageWriter(target, WIDTH, HEIGHT) as writer:
        writer.write(failing_strips())
    assert files_in(tmp_path) == {"keep.txt"}

    with pytest.raises(failure), ImageWriter(target, WIDTH, HEIGHT) as writer:
        writer.write([pixels])  # fully written, then the block fails before it ends
        raise failure("stop")
    assert files_in(tmp_path) == {"keep.txt"}


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_files_under_construction_are_unnamed_or_hidden(tmp_path, suffix, temp_files):
    target = tmp_path / f"out{suffix}"
    seen = []

    def strips():
        yield np.zeros((10, WIDTH, 3), np.float32)
        seen.append(files_in(tmp_path))  # the first rows are in the file now
        yield np.ones((HEIGHT - 10, WIDTH, 3), np.float32)

    with ImageWriter(target, WIDTH, HEIGHT) as writer:
        writer.write(strips())
        seen.append(files_in(tmp_path))  # finished, not yet published
    if temp_files == "unnamed":  # nothing a killed process could leave behind
        assert seen == [set(), set()]
    else:
        assert all(names and all(name.startswith(".out") for name in names) for names in seen), seen
    assert files_in(tmp_path) == {target.name}
    assert read_image(target)[-1].min() == 1.0
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_wrong_strips_are_programming_errors_and_leave_no_file(tmp_path, temp_files):
    target = tmp_path / "out.png"
    with pytest.raises(ValueError, match="delivered 10 of"), ImageWriter(target, WIDTH, HEIGHT) as writer:
        writer.write([np.zeros((10, WIDTH, 3), np.float32)])
    with pytest.raises(ValueError, match="more than"), ImageWriter(target, WIDTH, HEIGHT) as writer:
        writer.write([np.zeros((HEIGHT + 1, WIDTH, 3), np.float32)])
    with pytest.raises(ValueError, match="does not fit"), ImageWriter(target, WIDTH, HEIGHT) as writer:
        writer.write([np.zeros((HEIGHT, WIDTH + 1, 3), np.float32)])
    with pytest.raises(RuntimeError, match="closed before"), ImageWriter(target, WIDTH, HEIGHT):
        pass
    assert files_in(tmp_path) == set()


def test_a_replaced_file_is_read_afresh(tmp_path):
    # libvips caches decoded files by name; a file replaced in place must not be served from that cache
    source = tmp_path / "in.png"
    for level in (0, 200):
        replacement = tmp_path / "new.png"
        vips_image(np.full((6, 4, 3), level, np.uint8), exif_data=make_exif(6)).write_to_file(
            str(replacement)
        )
        replacement.replace(source)
        assert read_image(source).max() == pytest.approx(level / 255)


def test_bigtiff_is_used_for_large_data(tmp_path, monkeypatch):
    monkeypatch.setattr("classsr_cli.imaging.writer._BIGTIFF_BYTES", 1000)
    samples = random_samples(3, 16)
    for suffix in (".tif", ".png"):  # the final TIFF, and the intermediate one behind PNG
        target = tmp_path / f"big{suffix}"
        write_image(target, to_float(samples), bit_depth=16)
        assert np.array_equal(vips_open(target).numpy(), samples)
    with tifffile.TiffFile(tmp_path / "big.tif") as tiff:
        assert tiff.is_bigtiff


def test_write_is_called_once(tmp_path):
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    with (
        pytest.raises(RuntimeError, match="called once"),
        ImageWriter(tmp_path / "o.png", WIDTH, HEIGHT) as w,
    ):
        w.write([pixels])
        w.write([pixels])
    assert files_in(tmp_path) == set()


@pytest.mark.parametrize("suffix", [".gif", ".avif"])
def test_gif_and_avif_are_read(tmp_path, suffix):
    samples = random_samples(3, 8, height=12, width=8)
    source = tmp_path / f"in{suffix}"
    vips_image(samples).write_to_file(str(source))
    reader = open_image(source)
    assert reader.info.format == suffix[1:] and reader.info.color_channels == 3
    assert reader.read_all().shape == (12, 8, reader.info.channels)  # a GIF may come with alpha


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_resolution_is_written(tmp_path, suffix):
    for dpi, expected in ((None, 72.0), (300, 300.0)):
        target = tmp_path / f"out{suffix}"
        write_image(target, np.zeros((4, 4, 3), np.float32), dpi=dpi)
        assert vips_open(target).xres * 25.4 == pytest.approx(expected, rel=1e-3)


# -- the files users have: size limits, cut files, large EXIF, colour chunks ---------------------------------


def test_jpeg_is_refused_above_libjpegs_65500_pixels_before_any_work(tmp_path):
    # JPEG's header could say 65535, but libjpeg stops at 65500: 65504 would fail only after the upscale
    for width, height in ((65504, 8), (8, 65501)):
        with pytest.raises(OutputError, match="too large for JPEG .*65500"):
            ImageWriter(tmp_path / "out.jpg", width, height)
    ImageWriter(tmp_path / "out.jpg", 65500, 8).abort()  # the largest side libjpeg writes is accepted
    assert files_in(tmp_path) == set()


def test_a_jpeg_missing_only_its_end_marker_is_read_whole(tmp_path):
    samples = random_samples(3, 8, height=64, width=48)
    whole = tmp_path / "whole.jpg"
    vips_image(samples).jpegsave(str(whole), Q=90)
    data = whole.read_bytes()
    assert data.endswith(b"\xff\xd9")
    expected = read_image(whole)

    no_end = tmp_path / "no-end.jpg"
    no_end.write_bytes(data[:-2])  # every pixel there, no end-of-image marker: libjpeg and browsers show it
    reader = open_image(no_end)
    assert np.array_equal(reader.read_all(), expected)
    assert np.array_equal(np.concatenate([strip for _, strip in reader.strips(rows=16)]), expected)
    assert no_end.read_bytes() == data[:-2]  # the input is never written

    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])  # image data cut short: still refused
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_image(cut)

    trailer = tmp_path / "motion.jpg"
    trailer.write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 200)  # a phone's video after the image
    assert np.array_equal(read_image(trailer), expected)


def tiff_exif(endian: str, ifd0: list, exif_ifd: list) -> bytes:
    """An EXIF block with the given IFD0 and Exif IFD entries [(tag, type, count, value bytes)]."""

    def ifd(entries: list, offset: int, trailer_ifd: int = 0) -> tuple[bytes, bytes]:
        directory = struct.pack(endian + "H", len(entries))
        data = b""
        data_start = offset + 2 + 12 * len(entries) + 4
        for tag, kind, count, value in entries:
            if len(value) <= 4:
                directory += struct.pack(endian + "HHI", tag, kind, count) + value.ljust(4, b"\0")
            else:
                directory += struct.pack(endian + "HHII", tag, kind, count, data_start + len(data))
                data += value + b"\0" * (len(value) % 2)
        return directory + struct.pack(endian + "I", trailer_ifd), data

    exif_offset = 8 + 2 + 12 * (len(ifd0) + 1) + 4 + sum(len(v) + len(v) % 2 for *_, v in ifd0 if len(v) > 4)
    pointer = (0x8769, 4, 1, struct.pack(endian + "I", exif_offset))
    first, first_data = ifd([*ifd0, pointer], 8)
    second, second_data = ifd(exif_ifd, exif_offset)
    head = (b"II*\x00" if endian == "<" else b"MM\x00*") + struct.pack(endian + "I", 8)
    return b"Exif\x00\x00" + head + first + first_data + second + second_data


@pytest.mark.parametrize("endian", ["<", ">"])
def test_exif_over_64_kb_keeps_its_standard_tags_without_the_maker_note(tmp_path, endian):
    maker_note = b"Nikon\x00" + bytes(range(256)) * 300  # 76,806 bytes: too large for any JPEG segment
    exif = tiff_exif(
        endian,
        [(0x010F, 2, 10, b"BigCamera\x00"), (0x0112, 3, 1, struct.pack(endian + "H", 6))],
        [
            (0x927C, 7, len(maker_note), maker_note),  # before the time: its bytes lie past 64 KB
            (0x9003, 2, 20, b"2024:05:06 07:08:09\x00"),
            (0x829A, 5, 1, struct.pack(endian + "II", 1, 250)),  # exposure 1/250 s
        ],
    )
    assert len(exif) > 70_000
    target = tmp_path / "out.jpg"
    with ImageWriter(target, 8, 6, exif=exif) as writer:
        writer.write([np.full((6, 8, 3), 0.5, np.float32)])
    written = vips_open(target)
    assert written.get_typeof("exif-ifd0-Make") and written.get("exif-ifd0-Make").startswith("BigCamera")
    assert written.get("exif-ifd2-DateTimeOriginal").startswith("2024:05:06 07:08:09")
    assert written.get("exif-ifd2-ExposureTime").startswith("1/250")
    assert written.get("orientation") == 1 and b"Nikon\x00" not in written.get("exif-data")
    assert writer.dropped == [f"EXIF maker note ({len(maker_note):,} bytes): EXIF is kept up to 64 KB"]


def gamma_chunks(gamma: float, chromaticities: tuple | None = None) -> list[tuple[bytes, bytes]]:
    chunks = [(b"gAMA", struct.pack(">I", round(gamma * 100000)))]
    if chromaticities:
        chunks.append((b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in chromaticities))))
    return chunks


def through_profile(samples: np.ndarray, profile: bytes) -> np.ndarray:
    """sRGB samples of `samples` (uint8 RGB) read through `profile` by libvips (lcms)."""
    image = vips_image(samples)
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    return image.icc_transform("srgb", embedded=True, intent="relative").numpy().astype(int)


def test_png_gamma_and_chromaticities_become_an_icc_profile_saying_the_same(tmp_path):
    colours = np.array([[[200, 120, 60], [90, 160, 210], [128, 128, 128], [240, 200, 180]]], np.uint8)
    # gAMA 1.0: linear samples; mid-grey 128 is sRGB 188
    pixels = to_float(np.full((4, 4, 3), 128, np.uint8))
    target = tmp_path / "linear.jpg"
    with ImageWriter(target, 4, 4, png_chunks=gamma_chunks(1.0)) as writer:
        writer.write([pixels])
    assert writer.dropped == []
    profile = vips_open(target).get("icc-profile-data")
    assert np.abs(through_profile(np.full((1, 1, 3), 128, np.uint8), profile) - 188).max() <= 1
    # Display P3's primaries with gamma 2.2 land where libvips' own P3 profile (sRGB's curve) puts them
    p3 = (0.3127, 0.3290, 0.680, 0.320, 0.265, 0.690, 0.150, 0.060)
    target = tmp_path / "p3.tif"
    write_image(target, np.zeros((2, 2, 3), np.float32), png_chunks=gamma_chunks(1 / 2.2, p3))
    ours = through_profile(colours, vips_open(target).get("icc-profile-data"))
    assert np.abs(ours - through_profile(colours, builtin_profile("p3"))).max() <= 6
    assert np.abs(ours - colours).max() > 15  # P3 is not sRGB: the profile changes what is shown
    # grey: a grey profile, with the same curve
    target = tmp_path / "grey.jpg"
    write_image(target, np.full((2, 2, 1), 128 / 255, np.float32), png_chunks=gamma_chunks(1.0))
    grey = vips_open(target)
    assert grey.get("icc-profile-data")[16:20] == b"GRAY"
    assert abs(grey.icc_transform("srgb", embedded=True).numpy().astype(int) - 188).max() <= 1
    # an sRGB chunk rules: the samples are sRGB, which an untagged file is taken to be
    write_image(tmp_path / "srgb.jpg", pixels, png_chunks=[(b"sRGB", b"\x00"), *gamma_chunks(1.0)])
    assert vips_open(tmp_path / "srgb.jpg").get_typeof("icc-profile-data") == 0


def png_chunk_list(path: Path) -> list[bytes]:
    data, kinds, position = path.read_bytes(), [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        kinds.append(kind)
        position += 12 + length
    return kinds


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_metadata_libvips_does_not_write_is_put_into_the_stream_with_either_temporary_file(
    tmp_path, suffix, temp_files
):
    pixels = to_float(random_samples(3, 8))
    text = [(b"tEXt", b"parameters\x00steps 20"), (b"gAMA", struct.pack(">I", 45455))]
    target = tmp_path / f"out{suffix}"
    write_image(target, pixels, comments=[b"a comment"], png_chunks=text, exif=make_exif(1))
    assert files_in(tmp_path) == {target.name}
    info = open_image(target).info
    if suffix == ".png":
        assert png_chunk_list(target)[:2] == [b"IHDR", b"gAMA"]  # before the data, as PNG requires
        assert info.png_chunks == ((b"gAMA", text[1][1]), text[0], (b"tEXt", b"Comment\x00a comment"))
    else:
        assert info.comments == (b"a comment",) and b"ClassSRTestCam" in info.exif
    assert np.abs(read_image(target) - pixels).max() < (0.2 if suffix == ".jpg" else 1e-6)


def test_a_write_error_while_metadata_is_put_in_leaves_no_file(tmp_path, monkeypatch, temp_files):
    real_write = os.write

    def disk_full(fd, data):
        if fd > 2:  # the output, not the terminal
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(writer_module.os, "write", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        write_image(tmp_path / "out.png", np.zeros((8, 8, 3), np.float32), png_chunks=[(b"tEXt", b"k\x00v")])
    assert files_in(tmp_path) == set()


@pytest.mark.parametrize(
    "target, channels, bit_depth, expected",
    [
        ("out.jpg", 4, 8, ["alpha flattened onto white (JPEG has no alpha)"]),
        ("out.jpg", 3, 16, ["16-bit samples written at 8 bits (JPEG holds 8)"]),
        ("out.webp", 4, 16, ["16-bit samples written at 8 bits (WebP holds 8)"]),
        ("out.png", 4, 16, []),
        ("out.tif", 2, 16, []),
    ],
)
def test_what_a_format_cannot_hold_of_the_pixels_is_said(tmp_path, target, channels, bit_depth, expected):
    """JPEG has no alpha and JPEG and WebP hold 8 bits: the writer says so (the run prints it as a note)."""
    writer = writer_module.ImageWriter(tmp_path / target, 4, 4, channels=channels, bit_depth=bit_depth)
    assert writer.converted == expected
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_png_is_written_with_the_chosen_row_filter_and_level(tmp_path):
    # docs/formats.md: "up" on every row at zlib level 3 (the adaptive filter took 1.8x the time)
    rng = np.random.default_rng(5)
    ramp = np.linspace(0, 1, 64)[None, :, None] * np.ones((48, 1, 3))
    image = (ramp + rng.random((48, 64, 3)) * 0.05) / 1.05
    write_image(tmp_path / "out.png", image.astype(np.float32))
    data = (tmp_path / "out.png").read_bytes()
    offset, idat = 8, b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        if data[offset + 4 : offset + 8] == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    rows = zlib.decompress(idat)
    stride = 1 + 64 * 3
    assert len(rows) == 48 * stride
    assert {rows[row * stride] for row in range(48)} == {2}  # PNG filter type 2: Up
    assert writer_module.PNG_FILTER == "up" and writer_module.PNG_COMPRESSION == 3


# -- encoding while the strips arrive ------------------------------------------------------------------------


SIGNATURE = {".png": b"\x89PNG", ".jpg": b"\xff\xd8\xff"}


def _encoder_threads() -> list:
    return [
        thread for thread in threading.enumerate() if thread.name == "classsr-encoder" and thread.is_alive()
    ]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("budget", [writer_module.ENCODER_BUDGET, 0])
def test_png_and_jpeg_are_encoded_while_the_strips_still_arrive(
    tmp_path, suffix, budget, monkeypatch, temp_files
):
    # the encoder works in a thread of its own from the first strips on: the output file is there and
    # growing before the last strip is given (earlier, an intermediate TIFF was converted once complete);
    # where its buffers would pass the budget (very wide images) it starts after the last strip instead
    monkeypatch.setattr(writer_module, "ENCODER_BUDGET", budget)
    height, width = 1024, 1024  # TIFF strips of 170 rows
    samples = random_samples(3, 8, height, width)
    seen = []

    def strips(writer):
        for top in range(0, height - 128, 128):
            yield samples[top : top + 128]
        deadline = time.monotonic() + (20 if budget else 0.5)
        part = writer._parts[-1]
        while os.fstat(part.fd).st_size < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(os.pread(part.fd, len(SIGNATURE[suffix]), 0))
        yield samples[height - 128 :]

    target = tmp_path / f"out{suffix}"
    with ImageWriter(target, width, height) as writer:
        writer.write(strips(writer))
    assert seen == [SIGNATURE[suffix] if budget else b""]
    written = vips_open(target).numpy()
    if suffix == ".png":
        assert np.array_equal(written, samples)
    assert files_in(tmp_path) == {target.name}
    assert _encoder_threads() == []


def test_an_encoder_error_stops_the_strips_and_leaves_no_file(tmp_path, monkeypatch, temp_files):
    fail = threading.Event()

    def failing(self, image, target):
        fail.wait(20)
        raise pyvips.Error("cannot write: No space left on device")

    monkeypatch.setattr(writer_module.ImageWriter, "_encode_image", failing)
    height, width = 4096, 256
    given = []

    def strips():
        for top in range(0, height, 64):
            given.append(top + 64)
            if top == 1024:
                fail.set()
                time.sleep(0.5)
            yield np.zeros((64, width, 3), np.uint8)

    with (
        pytest.raises(OutputError, match="No space left"),
        ImageWriter(tmp_path / "o.png", width, height) as w,
    ):
        w.write(strips())
    assert given[-1] < height  # the strips stopped when the encoder failed
    assert files_in(tmp_path) == set()
    assert _encoder_threads() == []


def test_an_encoder_failure_on_a_full_disk_says_so(tmp_path, monkeypatch):
    # libvips' PNG writer reports only "unable to write to target" when the disk is full
    def failing(self, image, target):
        raise pyvips.Error("vips2png: unable to write to target target")

    monkeypatch.setattr(writer_module.ImageWriter, "_encode_image", failing)
    real = os.fstatvfs
    full = os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(writer_module.os, "fstatvfs", lambda fd: full)
    with pytest.raises(OutputError, match="No space left on device; vips2png: unable to write"):
        write_image(tmp_path / "o.png", np.zeros((8, 8, 3), np.float32))
    monkeypatch.setattr(writer_module.os, "fstatvfs", real)
    with pytest.raises(OutputError) as raised:
        write_image(tmp_path / "o.png", np.zeros((8, 8, 3), np.float32))
    assert "No space" not in str(raised.value)
    assert files_in(tmp_path) == set()


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failing_source_stops_the_encoder_thread(tmp_path, failure, temp_files):
    def strips():
        yield np.zeros((500, 300, 3), np.uint8)
        raise failure("stop")

    with pytest.raises(failure), ImageWriter(tmp_path / "o.png", 300, 1000) as writer:
        writer.write(strips())
    assert files_in(tmp_path) == set()
    assert _encoder_threads() == []


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_while_the_encoder_finishes_stops_it_and_leaves_no_file(tmp_path, monkeypatch, temp_files):
    # the encoder starts after the last strip (a very wide image's way) and Ctrl-C comes while the writer
    # waits for it: libvips is stopped (its input ends) before the files it reads and writes are closed
    # (it read on from a closed descriptor, "Bad file descriptor" in its source's callback)
    monkeypatch.setattr(writer_module, "ENCODER_BUDGET", 0)
    height, width = 3000, 3000
    strip = random_samples(3, 8, 100, width)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    def strips():
        for _ in range(height // 100):
            yield strip
        signal.setitimer(signal.ITIMER_REAL, 0.1)

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), ImageWriter(tmp_path / "o.png", width, height) as writer:
            writer.write(strips())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert _encoder_threads() == []
    assert files_in(tmp_path) == set()


@pytest.mark.parametrize("budget", [writer_module.ENCODER_BUDGET, 0])
def test_ctrl_c_returns_only_once_an_encoder_deaf_to_it_has_finished(tmp_path, monkeypatch, budget):
    # libwebp encodes the whole picture at once, and its end of input does not stop it: the writer waits
    # for it before it closes the files (Thread.join, interrupted by Ctrl-C, let it return at once)
    monkeypatch.setattr(writer_module, "ENCODER_BUDGET", budget)
    finished = []

    def deaf(self, image, target):
        time.sleep(0.6)
        finished.append(True)

    monkeypatch.setattr(writer_module.ImageWriter, "_encode_image", deaf)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    def strips():
        yield np.zeros((16, 16, 3), np.float32)
        signal.setitimer(signal.ITIMER_REAL, 0.2)

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), ImageWriter(tmp_path / "o.webp", 16, 16) as writer:
            writer.write(strips())
        assert finished == [True]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert files_in(tmp_path) == set()
