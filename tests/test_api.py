"""The Python API gives what the command line gives: the README's and docs/api.md's examples run as written,
and their files and arrays equal `classsr upscale`'s to the byte."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import classsr_cli
from classsr_cli.cli import app
from classsr_cli.errors import InputError, ModelError, OutputError
from classsr_cli.imaging import read_image, write_image
from classsr_cli.pixels import samples_from_unit

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "classsr_cli" / "samples" / "picos-de-europa.png"
runner = CliRunner()


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture
def photo_folder(tmp_path, monkeypatch):
    """A folder holding photo.png, a 96x72 crop of the bundled sample, as the examples' working folder."""
    crop = read_image(SAMPLE)[100:172, 200:296]
    write_image(tmp_path / "photo.png", crop)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_example_writes_what_classsr_upscale_writes(photo_folder):
    (example,) = python_blocks(ROOT / "README.md")
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    result = runner.invoke(app, ["upscale", "photo.png", "cli.png", "--json"])
    assert result.exit_code == 0, result.output
    assert (photo_folder / "photo-x4.png").read_bytes() == (photo_folder / "cli.png").read_bytes()
    printed = json.loads(result.stdout)
    report = scope["report"]
    for key in ("seconds", "engine_seconds", "output"):
        printed.pop(key), report.pop(key)
    assert report == printed


def test_the_example_of_docs_api_runs(photo_folder):
    for block in python_blocks(ROOT / "docs" / "api.md"):
        exec(compile(block, "docs/api.md", "exec"), {})


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grey_alpha_and_sixteen_bits_come_back_as_the_file_holds_them(tmp_path, channels):
    rng = np.random.default_rng(channels)
    image = np.clip(read_image(SAMPLE)[:40, :56].mean(axis=2, keepdims=True), 0, 1)
    image = np.concatenate([image] * (3 if channels == 4 else 1), axis=2)
    if channels in (2, 4):
        image = np.concatenate([image, rng.random((40, 56, 1), dtype=np.float32)], axis=2)
    write_image(tmp_path / "in.png", image, bit_depth=16)
    restorer = classsr_cli.load("fsrcnn", device="cpu")
    restorer.upscale_file(tmp_path / "in.png", tmp_path / "out.png")
    samples = samples_from_unit(read_image(tmp_path / "in.png"), np.uint16)
    array = samples[:, :, 0] if channels == 1 else samples
    out = restorer.upscale(array)
    assert out.dtype == np.uint16 and out.shape == (160, 224, *array.shape[2:])
    written = samples_from_unit(read_image(tmp_path / "out.png"), np.uint16)
    assert np.array_equal(out.reshape(written.shape), written)


def test_mistakes_are_one_line_errors_and_write_nothing(tmp_path):
    restorer = classsr_cli.load("fsrcnn", device="cpu")
    for bad in (np.zeros((4, 4, 5), np.uint8), np.zeros(7), np.full((4, 4), 1.5), np.zeros((4, 4), np.int32)):
        with pytest.raises(InputError):
            restorer.upscale(bad)
    with pytest.raises(ModelError, match="denoise"):
        restorer.denoise(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ModelError, match="unknown model"):
        classsr_cli.load("nope")
    with pytest.raises(ModelError, match="denoising model"):
        classsr_cli.load("dncnn", task="upscale")
    write_image(tmp_path / "in.png", np.full((8, 8, 3), 0.5, np.float32))
    (tmp_path / "out.png").write_bytes(b"keep")
    with pytest.raises(OutputError, match="already exists"):
        restorer.upscale_file(tmp_path / "in.png", tmp_path / "out.png")
    with pytest.raises(OutputError, match="overwrite the input"):
        restorer.upscale_file(tmp_path / "in.png", tmp_path / "in.png", overwrite=True)
    assert (tmp_path / "out.png").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]
