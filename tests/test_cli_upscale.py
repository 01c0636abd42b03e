"""`classsr upscale` end to end on tiny images: outputs, metadata, routing options and bad input."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
import pyvips
import tifffile
import torch
from typer.testing import CliRunner

from classsr_cli.cli import app
from classsr_cli.imaging import open_image, read_image, write_image
from classsr_cli.models import create
from classsr_cli.weights import save_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create("fsrcnn", widths=[4, 8, 12]).eval()
    for branch in net.branches:  # outputs around mid-grey, so that clipping does not hide differences
        branch.tail_conv.bias.data.fill_(0.5)
    return net


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("w") / "tiny.safetensors", "fsrcnn")


def photo(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth random picture: tiny networks on noise would tell us little."""
    rng = np.random.default_rng(seed)
    small = rng.random((height // 8 + 2, width // 8 + 2, channels)).astype(np.float32)
    image = pyvips.Image.new_from_array(small).resize(8, kernel="linear")
    array = np.ndarray(
        buffer=image.write_to_memory(), dtype=np.float32, shape=(image.height, image.width, channels)
    )
    return np.clip(array[:height, :width], 0, 1)


def upscale(*args):
    return runner.invoke(app, ["upscale", *map(str, args)])


def only_files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_official_checkpoint_matches_the_official_tile_loop_within_one_grey_level(model, tmp_path):
    lr_path = tmp_path / "grid.png"
    write_image(lr_path, photo(88, 116))  # 88 = 2*28+32, 116 = 3*28+32: the official grid covers it exactly
    checkpoint = tmp_path / "official.pth"
    torch.save(model.state_dict(), checkpoint)
    result = upscale(lr_path, tmp_path / "out.png", "--weights", checkpoint, "--tiling", "paper")
    assert result.exit_code == 0, result.output
    lr = torch.from_numpy(read_image(lr_path)).permute(2, 0, 1)[None]
    acc, count = torch.zeros(1, 3, 352, 464), torch.zeros(1, 3, 352, 464)
    with torch.no_grad():
        for y in range(0, 57, 28):
            for x in range(0, 85, 28):
                tile = lr[:, :, y : y + 32, x : x + 32]
                acc[:, :, 4 * y : 4 * y + 128, 4 * x : 4 * x + 128] += model.branches[int(model.route(tile))](
                    tile
                )
                count[:, :, 4 * y : 4 * y + 128, 4 * x : 4 * x + 128] += 1
    official = np.round((acc / count).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    ours = read_image(tmp_path / "out.png") * 255
    assert np.abs(ours - official).max() <= 1.0


def test_json_report_and_class_map(weights, tmp_path):
    write_image(tmp_path / "in.png", photo(50, 70))
    result = upscale(
        tmp_path / "in.png",
        tmp_path / "out.png",
        "--weights",
        weights,
        "--json",
        "--class-map",
        tmp_path / "map.png",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "ClassSR-FSRCNN"  # which model ran, as the text summary names it
    assert {
        "input",
        "output",
        "width",
        "height",
        "out_width",
        "out_height",
        "tiles",
        "class_counts",
        "flops_ratio",
        "seconds",
        "device",
    } <= set(report)
    assert (report["width"], report["height"], report["out_width"], report["out_height"]) == (
        70,
        50,
        280,
        200,
    )
    assert report["tiles"] == 2 * 3 and sum(report["class_counts"]) == 6
    assert 0 < report["flops_ratio"] < 1.1 and report["device"] == "cpu"
    assert open_image(tmp_path / "out.png").info.width == 280
    assert read_image(tmp_path / "map.png").shape[:2] == (50, 70)


def test_branch_m_is_the_base_network_without_classifier(weights, tmp_path):
    write_image(tmp_path / "in.png", photo(40, 40))
    result = upscale(
        tmp_path / "in.png", tmp_path / "out.png", "--weights", weights, "--branch", "3", "--json"
    )
    report = json.loads(result.stdout)
    assert report["flops_ratio"] == pytest.approx(1.0) and report["class_counts"] == [0, 0, report["tiles"]]
    result = upscale(
        tmp_path / "in.png", tmp_path / "b.png", "--weights", weights, "--flops-budget", "0.6", "--json"
    )
    assert json.loads(result.stdout)["flops_ratio"] <= 0.6 + 1e-9
    # below the smallest branch plus the Class-Module no routing fits: every tile takes branch 1
    result = upscale(
        tmp_path / "in.png", tmp_path / "c.png", "--weights", weights, "--flops-budget", "0.2", "--json"
    )
    report = json.loads(result.stdout)
    assert report["class_counts"] == [report["tiles"], 0, 0]


@pytest.mark.parametrize(
    "channels, bit_depth, suffix",
    [(1, 8, ".png"), (2, 8, ".png"), (4, 16, ".png"), (3, 16, ".tif"), (3, 8, ".jpg"), (3, 8, ".webp")],
)
def test_depth_grey_and_alpha_are_kept(weights, tmp_path, channels, bit_depth, suffix):
    image = photo(36, 44, channels)
    write_image(tmp_path / f"in{suffix if suffix != '.jpg' else '.png'}", image, bit_depth=bit_depth)
    source = tmp_path / f"in{suffix if suffix != '.jpg' else '.png'}"
    result = upscale(source, tmp_path / f"out{suffix}", "--weights", weights)
    assert result.exit_code == 0, result.output
    info = open_image(tmp_path / f"out{suffix}").info
    assert (info.width, info.height) == (176, 144)
    if suffix in (".png", ".tif"):
        assert info.bit_depth == bit_depth
        assert info.color_channels == (1 if channels <= 2 else 3)
        assert info.has_alpha == (channels in (2, 4))


def test_icc_and_exif_orientation(weights, tmp_path):
    image = (photo(40, 60) * 255).astype(np.uint8)
    vips = pyvips.Image.new_from_array(image).copy(interpretation="srgb")
    vips.set_type(pyvips.GValue.gint_type, "orientation", 6)
    vips.jpegsave(str(tmp_path / "rotated.jpg"), Q=95, profile="srgb")
    result = upscale(tmp_path / "rotated.jpg", tmp_path / "out.jpg", "--weights", weights)
    assert result.exit_code == 0, result.output
    info = open_image(tmp_path / "out.jpg").info
    assert (info.width, info.height) == (160, 240)  # upright: rotated by the EXIF orientation
    assert info.icc
    out = pyvips.Image.new_from_file(str(tmp_path / "out.jpg"))
    assert not out.get_typeof("orientation") or out.get("orientation") == 1


def test_folder_in_folder_out(weights, tmp_path):
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", photo(33, 40))
    write_image(tmp_path / "in" / "b.jpg", photo(40, 33))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    result = upscale(tmp_path / "in", tmp_path / "out", "--weights", weights, "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert [r["out_width"] for r in reports] == [160, 132]
    assert only_files(tmp_path / "out") == ["a.png", "b.jpg"]


def test_a_folder_rerun_does_the_new_images_and_leaves_existing_outputs_alone_in_one_line(weights, tmp_path):
    inputs = image_folder(tmp_path / "in", "a.png", "b.png", "c.png", "d.png")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (out / name).write_bytes(b"mine")  # results of an earlier run, or the user's own files
    (inputs / "e.png").write_bytes((inputs / "a.png").read_bytes())  # a new photo since
    result = upscale(inputs, out, "--weights", weights, "--json")
    assert result.exit_code == 0, result.output
    documents = json.loads(result.stdout)
    assert [d.get("out_width") for d in documents] == [120, None, None, None, None]
    assert [d.get("skipped") for d in documents[1:]] == ["output exists"] * 4
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: left 4 images alone, their output exists (a.png, b.png, c.png and 1 more): "
        "pass --overwrite (overwrite=True in Python) to replace them"
    ]
    assert result.stderr.splitlines()[-1] == "1 image written, 4 left alone"
    assert all((out / name).read_bytes() == b"mine" for name in ("a.png", "b.png", "c.png", "d.png"))
    # and with --overwrite every image is done again
    again = upscale(inputs, out, "--weights", weights, "--overwrite", "--json")
    assert again.exit_code == 0 and len(json.loads(again.stdout)) == 5 and "note:" not in again.stderr
    assert again.stderr.splitlines()[-1] == "5 images written"
    assert (out / "a.png").read_bytes() != b"mine"


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()  # no blank line before or after it either
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_input_gives_one_line_and_leaves_nothing(weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "text.png").write_text("hello")
    write_image(tmp_path / "ok.png", photo(40, 40))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "evil.pth").write_bytes(b"\x80\x04\x95not a checkpoint")
    cases = [
        (tmp_path / "missing.png", out / "a.png", []),
        (tmp_path / "text.png", out / "a.png", []),
        (tmp_path / "truncated.png", out / "a.png", []),
        (tmp_path / "ok.png", out / "a.bmp", []),  # unknown output type
        (tmp_path / "ok.png", tmp_path / "no-such-folder" / "a.png", []),
        (tmp_path / "ok.png", out / "a.png", ["--model", "edsr"]),
        (tmp_path / "ok.png", out / "a.png", ["--branch", "7"]),
        (tmp_path / "ok.png", out / "a.png", ["--max-pixels", "100"]),
    ]
    for source, target, extra in cases:
        weights_args = [] if "--model" in extra else ["--weights", weights]
        one_line_error(upscale(source, target, *weights_args, *extra))
    one_line_error(upscale(tmp_path / "ok.png", out / "a.png", "--weights", tmp_path / "evil.pth"))
    assert only_files(out) == []


def test_existing_output_and_input_are_protected(weights, tmp_path):
    write_image(tmp_path / "in.png", photo(40, 40))
    before = (tmp_path / "in.png").read_bytes()
    assert "never overwritten" in one_line_error(
        upscale(tmp_path / "in.png", tmp_path / "in.png", "--weights", weights, "--overwrite")
    )
    (tmp_path / "out.png").write_bytes(b"mine")
    assert "--overwrite" in one_line_error(
        upscale(tmp_path / "in.png", tmp_path / "out.png", "--weights", weights)
    )
    assert (tmp_path / "out.png").read_bytes() == b"mine"
    assert (tmp_path / "in.png").read_bytes() == before
    replaced = upscale(tmp_path / "in.png", tmp_path / "out.png", "--weights", weights, "--overwrite")
    assert replaced.exit_code == 0
    assert sum(line.startswith("model loaded in ") for line in replaced.stderr.splitlines()) == 1
    assert only_files(tmp_path) == ["in.png", "out.png"]


# -- planning a run: no file is ever lost ---------------------------------------------------------------


def image_folder(folder, *names):
    folder.mkdir(exist_ok=True)
    for index, name in enumerate(names):
        source = folder / name
        if name.endswith(".gif"):
            pyvips.Image.new_from_array((photo(30, 30, seed=index) * 255).astype(np.uint8)).copy(
                interpretation="srgb"
            ).gifsave(str(source))
        else:
            write_image(source, photo(30, 30, seed=index))
    return folder


def test_outputs_that_would_collide_are_refused_naming_both_before_any_work(weights, tmp_path):
    inputs = image_folder(tmp_path / "in", "photo.png", "photo.gif")
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    for args in ([tmp_path / "out"], [tmp_path / "out", "--overwrite"]):
        line = one_line_error(upscale(inputs, *args, "--weights", weights))
        assert "photo.gif" in line and "photo.png" in line and "both" in line
        assert not (tmp_path / "out").exists()  # not even the folder: nothing is written
    # output folder = input folder, --overwrite: the input photo.png would be replaced
    line = one_line_error(upscale(inputs, inputs, "--weights", weights, "--overwrite"))
    assert "would overwrite the input" in line
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


def test_an_output_that_is_an_input_by_another_name_is_refused(weights, tmp_path):
    inputs = image_folder(tmp_path / "in", "a.png")
    before = (inputs / "a.png").read_bytes()
    (tmp_path / "out").mkdir()
    os.link(inputs / "a.png", tmp_path / "out" / "a.png")  # a hard link: the same file
    line = one_line_error(upscale(inputs, tmp_path / "out", "--weights", weights, "--overwrite"))
    assert "would overwrite the input" in line
    one_line_error(upscale(inputs / "a.png", tmp_path / "in" / ".." / "in" / "A.png", "--weights", weights))
    assert (inputs / "a.png").read_bytes() == before


def test_class_maps_of_inputs_sharing_a_stem_get_distinct_names(weights, tmp_path):
    inputs = image_folder(tmp_path / "in", "photo.jpg", "photo.png", "other.png")
    maps = tmp_path / "maps"
    result = upscale(inputs, tmp_path / "out", "--weights", weights, "--class-map", maps, "--json")
    assert result.exit_code == 0, result.output
    assert only_files(tmp_path / "maps") == [
        "other.classes.png",
        "photo.jpg.classes.png",
        "photo.png.classes.png",
    ]
    assert "note: photo.jpg: class map photo.jpg.classes.png" in result.stderr
    assert only_files(tmp_path / "out") == ["other.png", "photo.jpg", "photo.png"]


def test_a_folder_of_one_image_makes_its_output_folder_and_dot_files_are_skipped(weights, tmp_path):
    inputs = image_folder(tmp_path / "in", "only.png")
    (inputs / "._only.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    (inputs / ".hidden.png").write_bytes(b"not an image")
    result = upscale(inputs, tmp_path / "new" / "out", "--weights", weights, "--json")
    assert result.exit_code == 0, result.output
    assert [r["input"] for r in json.loads(result.stdout)] == [str(inputs / "only.png")]
    assert only_files(tmp_path / "new" / "out") == ["only.png"]


def test_json_errors_are_json_for_one_file_as_for_a_folder(weights, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.png").write_text("not an image")
    folder = upscale(tmp_path / "in", tmp_path / "out", "--weights", weights, "--json")
    single = upscale(tmp_path / "in" / "bad.png", tmp_path / "out.png", "--weights", weights, "--json")
    for result in (folder, single):
        assert result.exit_code == 2
    assert json.loads(folder.stdout) == [json.loads(single.stdout)]
    assert set(json.loads(single.stdout)) == {"input", "error"}
    refused = upscale(tmp_path / "missing.png", tmp_path / "out.png", "--weights", weights, "--json")
    assert refused.exit_code == 2 and "input not found" in json.loads(refused.stdout)["error"]


def test_help_reads_cleanly():
    for command in (
        ["--help"],
        ["upscale", "--help"],
        ["train", "assemble", "--help"],
        ["weights", "add", "--help"],
    ):
        text = runner.invoke(app, command, terminal_width=120).output
        assert "<bool>" not in text and "{" not in text, text
    assert "upscale [OPTIONS] INPUT OUTPUT" in runner.invoke(app, ["upscale", "--help"]).output


def test_messages_say_what_to_do_in_the_options_own_terms(weights, tmp_path):
    write_image(tmp_path / "in.png", photo(20, 30))
    line = one_line_error(
        upscale(tmp_path / "in.png", tmp_path / "out.png", "--weights", weights, "--max-pixels", "100")
    )
    assert "600 pixels, over the limit of 100 pixels" in line and "--max-pixels" in line
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    line = one_line_error(
        upscale(tmp_path / "in.png", tmp_path / "out.png", "--weights", tmp_path / "notes.pth")
    )
    assert "not a PyTorch checkpoint" in line and "weights_only" not in line
    result = upscale(
        tmp_path / "in.png", tmp_path / "out.png", "--weights", weights, "--class-map", tmp_path / "m.png"
    )
    assert result.exit_code == 0 and "green: simple, branch 1" in " ".join(result.output.split())


def test_only_the_first_page_or_frame_is_upscaled_and_that_is_said(weights, tmp_path):
    frames = (np.stack([photo(24, 24, seed=i) for i in range(3)]) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "pages.tif", frames, photometric="rgb")  # three pages
    animation = pyvips.Image.arrayjoin([pyvips.Image.new_from_array(f) for f in frames], across=1)
    animation = animation.copy(interpretation="srgb")
    animation.set_type(pyvips.GValue.gint_type, "page-height", 24)
    animation.gifsave(str(tmp_path / "frames.gif"))
    for name, word in (("pages.tif", "pages"), ("frames.gif", "frames")):
        result = upscale(tmp_path / name, tmp_path / f"{name}.png", "--weights", weights, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["pages"] == 3 and report["out_height"] == 96
        assert f"holds 3 {word}: only the first was upscaled" in result.stderr
    single = json.loads(
        upscale(tmp_path / "pages.tif.png", tmp_path / "x.png", "--weights", weights, "--json").stdout
    )
    assert "pages" not in single


def camera_exif(orientation: int, width: int, height: int, dpi: int) -> bytes:
    """EXIF as a camera writes it: IFD0 (orientation, resolution, Exif IFD), Exif IFD (pixel size), IFD1."""
    ifd0 = struct.pack("<H", 5)
    ifd0 += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    ifd0 += struct.pack("<HHII", 0x011A, 5, 1, 74) + struct.pack("<HHII", 0x011B, 5, 1, 82)
    ifd0 += struct.pack("<HHIHH", 0x0128, 3, 1, 2, 0) + struct.pack("<HHII", 0x8769, 4, 1, 90)
    ifd0 += struct.pack("<I", 120)  # next: IFD1 (the thumbnail's)
    resolution = struct.pack("<II", dpi, 1) * 2
    exif_ifd = struct.pack("<H", 2) + struct.pack("<HHII", 0xA002, 4, 1, width)
    exif_ifd += struct.pack("<HHII", 0xA003, 4, 1, height) + struct.pack("<I", 0)
    ifd1 = struct.pack("<H", 3) + struct.pack("<HHIHH", 0x0103, 3, 1, 6, 0)  # a JPEG thumbnail at 162
    ifd1 += (
        struct.pack("<HHII", 0x0201, 4, 1, 162) + struct.pack("<HHII", 0x0202, 4, 1, 4) + struct.pack("<I", 0)
    )
    thumbnail = b"\xff\xd8\xff\xd9"
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd0 + resolution + exif_ifd + ifd1 + thumbnail


def test_written_exif_describes_the_written_pixels(weights, tmp_path):
    image = pyvips.Image.new_from_array((photo(40, 60) * 255).astype(np.uint8)).copy(interpretation="srgb")
    image.set_type(pyvips.GValue.blob_type, "exif-data", camera_exif(6, 60, 40, 300))
    image.jpegsave(str(tmp_path / "camera.jpg"), Q=95)
    source = pyvips.Image.new_from_file(str(tmp_path / "camera.jpg"))
    assert source.get("exif-ifd2-PixelXDimension").startswith("60 ") and source.get_typeof(
        "exif-ifd1-Compression"
    )
    for suffix in (".jpg", ".png", ".webp"):
        result = upscale(tmp_path / "camera.jpg", tmp_path / f"out{suffix}", "--weights", weights)
        assert result.exit_code == 0, result.output
        out = pyvips.Image.new_from_file(str(tmp_path / f"out{suffix}"))
        assert (out.width, out.height) == (160, 240)  # upright: orientation 6 applied
        fields = {
            name: str(out.get(name)).split(" ")[0] for name in out.get_fields() if name.startswith("exif-")
        }
        assert fields["exif-ifd0-Orientation"] == "1"
        assert (fields["exif-ifd2-PixelXDimension"], fields["exif-ifd2-PixelYDimension"]) == ("160", "240")
        assert (
            fields["exif-ifd0-XResolution"] in ("72000/1000", "72/1")
            and fields["exif-ifd0-ResolutionUnit"] == "2"
        )
        if suffix != ".webp":  # WebP has no resolution of its own beside EXIF
            assert round(out.xres * 25.4) == 72, suffix  # what the file's own header says
        assert not [name for name in fields if name.startswith("exif-ifd1-")], fields  # no stale thumbnail


# -- metadata and files as users have them ------------------------------------------------------------------


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(pixels: np.ndarray, *chunks: bytes, after: tuple[bytes, ...] = (), frames=()) -> bytes:
    """An 8-bit RGB PNG made by hand: `chunks` before its image data, `after` after it; `frames` (more uint8
    pictures of the same size) make it an animated PNG whose first frame is `pixels`."""

    def data(picture):
        return zlib.compress(b"".join(b"\x00" + row.tobytes() for row in picture))

    height, width = pixels.shape[:2]

    def frame_control(sequence):
        return chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, 0, 0))

    animation = [chunk(b"acTL", struct.pack(">II", 1 + len(frames), 0)), frame_control(0)] if frames else []
    later = []
    for index, frame in enumerate(frames):
        later += [
            frame_control(1 + 2 * index),
            chunk(b"fdAT", struct.pack(">I", 2 + 2 * index) + data(frame)),
        ]
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
            *chunks,
            *animation,
            chunk(b"IDAT", data(pixels)),
            *later,
            *after,
            chunk(b"IEND", b""),
        ]
    )


def chunks_of(path, *kinds: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, payload) of a PNG file's chunks of these types, in file order."""
    data, found, position = path.read_bytes(), [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind in kinds:
            found.append((kind, data[position + 8 : position + 8 + length]))
        position += 12 + length
    return found


def jpeg_segments(path, marker: int) -> list[bytes]:
    """The payloads of a JPEG file's marker segments of this kind before its image data."""
    data, found, position = path.read_bytes(), [], 2
    while data[position + 1] != 0xDA:
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if data[position + 1] == marker:
            found.append(data[position + 4 : position + 2 + length])
        position += 2 + length
    return found


def pixels8(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (photo(height, width, seed=seed) * 255).astype(np.uint8)


def test_png_colour_chunks_are_kept_in_png_and_become_an_icc_profile_in_jpeg(weights, tmp_path):
    gamma = chunk(b"gAMA", struct.pack(">I", 100000))  # linear samples: browsers show them brighter
    primaries = chunk(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))
    source = tmp_path / "linear.png"
    source.write_bytes(png_bytes(pixels8(24, 24), gamma, primaries))
    before = source.read_bytes()
    result = upscale(source, tmp_path / "out.png", "--weights", weights)
    assert result.exit_code == 0, result.output
    assert chunks_of(tmp_path / "out.png", b"gAMA", b"cHRM", b"sRGB") == chunks_of(
        source, b"gAMA", b"cHRM", b"sRGB"
    )
    result = upscale(source, tmp_path / "out.jpg", "--weights", weights)
    assert result.exit_code == 0 and "not kept" not in result.output, result.output
    grey = pyvips.Image.new_from_array(np.full((1, 1, 3), 128, np.uint8)).copy(interpretation="srgb")
    profile = pyvips.Image.new_from_file(str(tmp_path / "out.jpg")).get("icc-profile-data")
    grey.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    assert np.abs(grey.icc_transform("srgb", embedded=True).numpy().astype(int) - 188).max() <= 1
    # an sRGB chunk is kept in PNG as well
    tagged = tmp_path / "srgb.png"
    tagged.write_bytes(
        png_bytes(pixels8(24, 24), chunk(b"sRGB", b"\x00"), chunk(b"gAMA", b"\x00\x00\xb1\x8f"))
    )
    assert upscale(tagged, tmp_path / "srgb-out.png", "--weights", weights).exit_code == 0
    assert chunks_of(tmp_path / "srgb-out.png", b"sRGB", b"gAMA") == [
        (b"sRGB", b"\x00"),
        (b"gAMA", b"\x00\x00\xb1\x8f"),
    ]
    assert source.read_bytes() == before
    assert only_files(tmp_path) == ["linear.png", "out.jpg", "out.png", "srgb-out.png", "srgb.png"]


def test_an_animated_png_says_that_only_its_first_frame_was_upscaled(weights, tmp_path):
    first = np.zeros((24, 24, 3), np.uint8)  # dark; the other frames are bright
    source = tmp_path / "anim.png"
    source.write_bytes(png_bytes(first, frames=[np.full((24, 24, 3), 250, np.uint8)] * 2))
    result = upscale(source, tmp_path / "out.png", "--weights", weights, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pages"] == 3 and report["out_width"] == 96
    assert "holds 3 frames: only the first was upscaled" in result.stderr
    assert read_image(tmp_path / "out.png").mean() < 0.6  # the first, dark frame
    still = tmp_path / "still.png"
    still.write_bytes(png_bytes(first))
    assert "pages" not in json.loads(
        upscale(still, tmp_path / "still-out.png", "--weights", weights, "--json").stdout
    )


def camera_exif_with_maker_note(maker_note: bytes) -> bytes:
    """EXIF as a camera writes it, without the prefix (a PNG eXIf chunk): Make and orientation in IFD0; the
    maker note, then the time, in the Exif IFD, so that the time lies beyond the first 64 KB."""
    make, time = b"BigCamera\x00", b"2024:05:06 07:08:09\x00"
    exif_ifd = 8 + 2 + 12 * 3 + 4
    values = exif_ifd + 2 + 12 * 2 + 4
    ifd0 = struct.pack("<H", 3) + struct.pack("<HHII", 0x010F, 2, len(make), values)
    ifd0 += struct.pack("<HHIHH", 0x0112, 3, 1, 1, 0) + struct.pack("<HHII", 0x8769, 4, 1, exif_ifd)
    ifd0 += struct.pack("<I", 0)
    exif = struct.pack("<H", 2) + struct.pack("<HHII", 0x927C, 7, len(maker_note), values + len(make))
    exif += struct.pack("<HHII", 0x9003, 2, len(time), values + len(make) + len(maker_note)) + struct.pack(
        "<I", 0
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd0 + exif + make + maker_note + time


def test_exif_over_64_kb_keeps_its_standard_tags_and_says_what_was_dropped(weights, tmp_path):
    maker_note = b"Canon" + b"\x07" * 69_995
    source = tmp_path / "camera.png"
    source.write_bytes(png_bytes(pixels8(24, 24), chunk(b"eXIf", camera_exif_with_maker_note(maker_note))))
    for suffix in (".jpg", ".png", ".webp"):
        target = tmp_path / f"out{suffix}"
        result = upscale(source, target, "--weights", weights, "--json")
        assert result.exit_code == 0, result.output
        out = pyvips.Image.new_from_file(str(target))
        assert out.get_typeof("exif-ifd0-Make") and out.get("exif-ifd0-Make").startswith("BigCamera"), suffix
        assert out.get_typeof("exif-ifd2-DateTimeOriginal"), suffix  # it lies beyond 64 KB in the input
        assert out.get("exif-ifd2-DateTimeOriginal").startswith("2024:05:06 07:08:09"), suffix
        assert json.loads(result.stdout)["metadata_dropped"] == [
            "EXIF maker note (70,000 bytes): EXIF is kept up to 64 KB"
        ]
    result = upscale(source, tmp_path / "text.jpg", "--weights", weights)
    assert "note: " in result.stderr and "metadata not kept: EXIF maker note (70,000 bytes)" in result.stderr


def test_xmp_over_64_kb_in_jpeg_is_dropped_with_a_word_and_kept_elsewhere(weights, tmp_path):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><!--' + b"history " * 9000 + b"--></x:xmpmeta>"
    image = pyvips.Image.new_from_array(pixels8(24, 24)).copy(interpretation="srgb")
    image.set_type(pyvips.GValue.blob_type, "xmp-data", xmp)
    image.tiffsave(str(tmp_path / "in.tif"))
    result = upscale(tmp_path / "in.tif", tmp_path / "out.jpg", "--weights", weights, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metadata_dropped"] == [
        f"XMP ({len(xmp):,} bytes: JPEG holds 65,504 in one segment)"
    ]
    assert upscale(tmp_path / "in.tif", tmp_path / "out.png", "--weights", weights).exit_code == 0
    assert pyvips.Image.new_from_file(str(tmp_path / "out.png")).get("xmp-data") == xmp


def test_png_text_is_kept_in_png_and_its_loss_said_elsewhere(weights, tmp_path):
    text = [
        chunk(b"tEXt", b"parameters\x00a lighthouse at dusk, Steps: 30, Seed: 1234"),
        chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"compressed words")),
        chunk(b"iTXt", "Title\x00\x00\x00fr\x00Titre\x00Phare à l'aube".encode()),
    ]
    source = tmp_path / "generated.png"
    source.write_bytes(png_bytes(pixels8(24, 24), *text[:2], after=text[2:]))  # text may follow the data
    assert upscale(source, tmp_path / "out.png", "--weights", weights).exit_code == 0
    kinds = (b"tEXt", b"zTXt", b"iTXt")
    assert chunks_of(tmp_path / "out.png", *kinds) == chunks_of(source, *kinds)
    for suffix, name in ((".jpg", "JPEG"), (".webp", "WebP"), (".tif", "TIFF")):
        result = upscale(source, tmp_path / f"out{suffix}", "--weights", weights, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["metadata_dropped"] == [
            f"PNG text parameters, Comment, Title ({name} has no place for PNG text)"
        ]
        assert result.stderr.count("metadata not kept") == 1


def jpeg_with_iptc_and_comments(path, records: bytes, comments: list[bytes]) -> None:
    """A JPEG from libvips with an APP13 (Photoshop resources: IPTC and a resolution block) and COM segments
    put in after its first segments, as cameras and editors write them."""
    pyvips.Image.new_from_array(pixels8(24, 24)).copy(interpretation="srgb").jpegsave(str(path), Q=95)
    data = path.read_bytes()
    resolution = b"8BIM\x03\xed\x00\x00" + struct.pack(">I", 16) + b"\x00" * 16
    iptc = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(records)) + records + b"\x00" * (len(records) % 2)
    payload = b"Photoshop 3.0\x00" + resolution + iptc
    segments = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    segments += b"".join(b"\xff\xfe" + struct.pack(">H", len(c) + 2) + c for c in comments)
    path.write_bytes(data[:2] + segments + data[2:])


def test_jpeg_iptc_and_comments_are_kept_where_the_output_holds_them_and_said_elsewhere(weights, tmp_path):
    records = b"\x1c\x02\x74" + struct.pack(">H", 14) + b"(c) A. Painter"  # 2:116 copyright
    records += b"\x1c\x02\x78" + struct.pack(">H", 17) + b"Harbour at sunset"  # 2:120 caption
    comments = [b"scanned from a slide", "Café du Port".encode()]
    source = tmp_path / "photo.jpg"
    jpeg_with_iptc_and_comments(source, records, comments)
    before = source.read_bytes()

    assert upscale(source, tmp_path / "out.jpg", "--weights", weights).exit_code == 0
    assert jpeg_segments(tmp_path / "out.jpg", 0xFE) == comments
    (app13,) = jpeg_segments(tmp_path / "out.jpg", 0xED)
    assert records in app13 and b"8BIM\x03\xed" not in app13  # the input's resolution block is not carried

    result = upscale(source, tmp_path / "out.png", "--weights", weights, "--json")
    assert chunks_of(tmp_path / "out.png", b"tEXt", b"iTXt") == [
        (b"tEXt", b"Comment\x00scanned from a slide"),  # ASCII: tEXt; UTF-8: iTXt
        (b"iTXt", "Comment\x00\x00\x00\x00\x00Café du Port".encode()),
    ]
    assert json.loads(result.stdout)["metadata_dropped"] == ["IPTC (PNG has no place for it)"]

    result = upscale(source, tmp_path / "out.tif", "--weights", weights, "--json")
    assert pyvips.Image.new_from_file(str(tmp_path / "out.tif")).get("iptc-data") == records
    assert "JPEG comments (TIFF has no place for them)" in json.loads(result.stdout)["metadata_dropped"]

    result = upscale(source, tmp_path / "out.webp", "--weights", weights, "--json")
    assert json.loads(result.stdout)["metadata_dropped"] == [
        "IPTC (WebP has no place for it)",
        "JPEG comments (WebP has no place for them)",
    ]
    assert source.read_bytes() == before
    assert only_files(tmp_path) == ["out.jpg", "out.png", "out.tif", "out.webp", "photo.jpg"]


def test_folder_entries_named_like_images_that_are_not_files_are_reported(weights, tmp_path):
    inputs = image_folder(tmp_path / "in", "a.png")
    (inputs / "b.png").mkdir()
    (inputs / "c.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(inputs / "d.png")
    result = upscale(inputs, tmp_path / "out", "--weights", weights)
    assert result.exit_code == 0, result.output
    lines = [
        " ".join(line.split()) for line in result.stderr.splitlines() if line.startswith("note: skipped")
    ]
    assert lines == [
        f"note: skipped {inputs / 'b.png'}: a folder",
        f"note: skipped {inputs / 'c.png'}: a symbolic link to {tmp_path / 'gone.png'}, which does not exist",
        f"note: skipped {inputs / 'd.png'}: a FIFO (named pipe)",
    ]
    assert only_files(tmp_path / "out") == ["a.png"]
    (inputs / "a.png").unlink()
    line = one_line_error(upscale(inputs, tmp_path / "out2", "--weights", weights))
    assert "no images found" in line and "b.png: a folder" in line and "d.png: a FIFO" in line
    assert not (tmp_path / "out2").exists()
