"""`classsr bench` on a tiny synthetic test set with tiny random FSRCNN weights: schema, metrics, report."""

import csv
import json
import math
import sys

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from classsr_cli.bench import ImagePair, load_pair, pair_key
from classsr_cli.engine import Upscaler
from classsr_cli.flops import measure
from classsr_cli.imaging import read_image
from classsr_cli.imaging.bicubic import imresize, matlab_uint8
from classsr_cli.models import create, create_base
from classsr_cli.weights import save_model

runner = CliRunner()
# (height, width) of the HR images; "c" is not a multiple of 4 and has no LR file: bench makes its LR
HR_SIZES = {"a": (64, 48), "b": (96, 80), "c": (70, 62)}
BUDGET = 0.6


def synthetic_hr(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients with a noisy corner: tiles of different difficulty."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    image[height // 2 :, width // 2 :] = rng.integers(0, 256, (height - height // 2, width - width // 2, 3))
    return image.astype(np.uint8)


def write_png(path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def read_png(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def bicubic_lr(hr: np.ndarray) -> np.ndarray:
    height, width = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
    return matlab_uint8(
        imresize(hr[:height, :width].astype(np.float32), output_shape=(height // 4, width // 4))
    )


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    classsr = create("fsrcnn", widths=[4, 8, 12]).eval()
    base = create_base("fsrcnn", 12).eval()
    for network in [*classsr.branches, base]:  # outputs near mid-grey, so clipping hides nothing
        network.tail_conv.bias.data.fill_(0.5)
    return classsr, base


@pytest.fixture(scope="module")
def weights(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    classsr, base = models
    return save_model(classsr, folder / "classsr.safetensors", "fsrcnn"), save_model(
        base, folder / "base.safetensors", "fsrcnn"
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets") / "Tiny"
    for seed, (name, (height, width)) in enumerate(HR_SIZES.items()):
        hr = synthetic_hr(height, width, seed)
        write_png(root / "HR" / f"{name}.png", hr)
        if name != "c":
            write_png(root / "LR" / f"{name}.png", bicubic_lr(hr))
    return root


def bench(*args, weights=None, env=None):
    extra = ["--weights", weights[0], "--base-weights", weights[1]] if weights else []
    return runner.invoke(app(), ["bench", *map(str, args), *map(str, extra)], env=env)


def app():
    from classsr_cli.cli import app as classsr_app

    return classsr_app


@pytest.fixture(scope="module")
def run(dataset, weights, tmp_path_factory):
    """One full bench (JSON, FLOPs budget row and report), shared by the tests that read its results."""
    report = tmp_path_factory.mktemp("report") / "out"
    result = bench(
        dataset, "--json", "--device", "cpu", "--flops-budget", BUDGET, "--report", report, weights=weights
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), report


def row(document, kind):
    return next(r for r in document["rows"] if r["kind"] == kind)


def test_json_schema_and_row_order(run):
    document, _ = run
    assert {"dataset", "images", "rows"} <= set(document)
    assert document["dataset"] == "Tiny" and document["images"] == 3
    names = [r["name"] for r in document["rows"]]
    assert names == ["FSRCNN-O", "ClassSR-FSRCNN", f"ClassSR-FSRCNN @{BUDGET:.0%} FLOPs", "Bicubic"]
    for entry in document["rows"]:
        assert {"name", "psnr", "psnr_y", "flops", "flops_ratio", "class_fractions", "seconds"} <= set(entry)
        assert [p["image"] for p in entry["per_image"]] == ["a", "b", "c"]
        assert 5 < entry["psnr"] < 60 and 5 < entry["psnr_y"] < 60 and entry["seconds"] >= 0
    classsr = row(document, "classsr")
    assert len(classsr["class_fractions"]) == 3 and math.isclose(
        sum(classsr["class_fractions"]), 1, abs_tol=1e-5
    )
    assert row(document, "base")["class_fractions"] is None and row(document, "bicubic")["flops"] is None
    assert row(document, "base")["params"] == sum(p.numel() for p in create_base("fsrcnn", 12).parameters())


def test_lr_made_when_missing_equals_bicubic_of_cropped_hr(dataset):
    hr_path = dataset / "HR" / "c.png"
    hr, lr = load_pair(ImagePair("c", hr_path, None, 68, 60))
    original = read_png(hr_path)
    assert np.array_equal(hr, original[:68, :60])  # cropped to a multiple of 4
    assert lr.dtype == np.uint8 and np.array_equal(lr, bicubic_lr(original))


def independent_psnr(sr: np.ndarray, hr: np.ndarray, luma: bool = False) -> float:
    sr, hr = sr.astype(np.float64)[4:-4, 4:-4], hr.astype(np.float64)[4:-4, 4:-4]
    if luma:  # BT.601 Y in 16..235, as MATLAB's rgb2ycbcr
        weights = np.array([65.481, 128.553, 24.966]) / 255
        sr, hr = 16 + sr @ weights, 16 + hr @ weights
    return 10 * math.log10(255**2 / np.mean((sr - hr) ** 2))


def test_psnr_equals_an_independent_calculation(run, dataset, models):
    document, _ = run
    hr = read_png(dataset / "HR" / "b.png")
    lr = read_png(dataset / "LR" / "b.png").astype(np.float32) / 255
    bicubic = np.round(np.clip(imresize(lr, scale=4), 0, 1) * 255).astype(np.uint8)
    base_out, _ = Upscaler(models[1], device="cpu").upscale_array(lr)
    base_out = np.round(base_out * 255).astype(np.uint8)
    for kind, sr in (("bicubic", bicubic), ("base", base_out)):
        measured = row(document, kind)["per_image"][1]
        assert measured["image"] == "b"
        assert measured["psnr"] == pytest.approx(independent_psnr(sr, hr), abs=1e-3)
        assert measured["psnr_y"] == pytest.approx(independent_psnr(sr, hr, luma=True), abs=1e-3)
    entries = row(document, "base")["per_image"]
    assert row(document, "base")["psnr"] == pytest.approx(np.mean([e["psnr"] for e in entries]), abs=1e-3)


def test_flops_ratio_is_one_for_the_base_and_follows_the_class_counts(run, models):
    document, _ = run
    classsr_model, base_model = models
    base = row(document, "base")
    assert base["flops_ratio"] == 1.0 and all(p["flops_ratio"] == 1.0 for p in base["per_image"])
    assert base["flops"] == measure(base_model).flops
    branch_flops = [measure(b).flops for b in classsr_model.branches]
    classifier_flops = measure(classsr_model.classifier).flops
    for kind in ("classsr", "budget"):
        entry = row(document, kind)
        counts = [round(f * entry["tiles"]) for f in entry["class_fractions"]]
        expected = (np.dot(counts, branch_flops) + classifier_flops * entry["tiles"]) / entry["tiles"]
        assert entry["flops"] == round(expected)
        assert entry["flops_ratio"] == pytest.approx(expected / base["flops"], abs=1e-6)
    assert row(document, "budget")["flops_ratio"] <= BUDGET + 1e-6
    # the paper's figure pools all sub-images of the set: weighted by tiles, not a mean of image means
    entry = row(document, "classsr")
    tiles = [p["tiles"] for p in entry["per_image"]]
    pooled = np.dot(tiles, [p["flops_ratio"] for p in entry["per_image"]]) / sum(tiles)
    assert entry["flops_ratio"] == pytest.approx(pooled, abs=1e-5)


def test_report_writes_csv_json_plot_and_class_maps(run):
    document, report = run
    assert json.loads((report / "bench.json").read_text()) == document
    with open(report / "per_image.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == 3 * len(document["rows"])
    assert {"image", "row", "psnr", "psnr_y", "flops_ratio", "class_1", "class_3", "seconds"} <= set(lines[0])
    first = next(line for line in lines if line["row"] == "ClassSR-FSRCNN" and line["image"] == "a")
    assert float(first["psnr"]) == pytest.approx(row(document, "classsr")["per_image"][0]["psnr"])
    assert read_image(report / "psnr_vs_flops.png").shape[2] in (3, 4)
    for name, (height, width) in HR_SIZES.items():
        assert read_image(report / "class_maps" / f"{name}.png").shape[:2] == (height, width)


def test_report_without_matplotlib_skips_the_plot_in_one_line(dataset, weights, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import now fails
    result = bench(dataset, "--limit", 1, "--json", "--report", tmp_path / "report", weights=weights)
    assert result.exit_code == 0, result.output
    assert "matplotlib is not installed" in result.stderr
    assert not (tmp_path / "report" / "psnr_vs_flops.png").exists()
    assert (tmp_path / "report" / "per_image.csv").exists() and (
        tmp_path / "report" / "class_maps" / "a.png"
    ).exists()


def test_name_is_looked_up_under_the_data_root(dataset, weights, tmp_path):
    root = tmp_path / "root"
    (root / "Test8K").mkdir(parents=True)
    (root / "Test8K" / "HR").symlink_to(dataset / "HR")
    for name in ("Test8K", "test8k"):
        result = bench(name, "--data-root", root, "--limit", 1, "--json", weights=weights)
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert document["dataset"] == "Test8K" and document["images"] == 1


def test_folder_of_photos_and_the_base_branch_when_no_base_weights(dataset, weights, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes((dataset / "HR" / "a.png").read_bytes())
    no_shipped = tmp_path / "no-shipped-weights"
    no_shipped.mkdir()
    args = ["bench", str(photos), "--weights", str(weights[0]), "--json"]
    result = runner.invoke(app(), args, env={"CLASSSR_WEIGHTS": str(no_shipped)})
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    base = document["rows"][0]
    assert document["images"] == 1 and "branch 3 only" in base["name"] and base["flops_ratio"] == 1.0


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()  # no blank line before or after it either
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_datasets_give_one_line_errors(dataset, weights, tmp_path):
    (tmp_path / "empty" / "HR").mkdir(parents=True)
    write_png(tmp_path / "bad" / "HR" / "a.png", synthetic_hr(64, 48, 0))
    (tmp_path / "bad" / "HR" / "b.png").write_text("not an image")
    hr = synthetic_hr(64, 48, 0)
    write_png(tmp_path / "mismatch" / "HR" / "a.png", hr)
    write_png(tmp_path / "mismatch" / "LR" / "a.png", bicubic_lr(hr)[:, :-1])
    cases = {
        tmp_path / "missing": "not found",
        tmp_path / "empty": "no images",
        tmp_path / "bad": "b.png",
        tmp_path / "mismatch": "needs 12x16",
    }
    for folder, message in cases.items():
        assert message in one_line_error(bench(folder, weights=weights))
    (tmp_path / "report.txt").write_text("a file, not a folder")
    assert "folder" in one_line_error(bench(dataset, "--report", tmp_path / "report.txt", weights=weights))
    assert "single network" in one_line_error(bench(dataset, "--weights", weights[1]))
    assert "--limit" in one_line_error(bench(dataset, "--limit", 0, weights=weights))


def test_tables_show_every_name_and_figure_whole_in_80_columns(dataset, weights):
    result = bench(
        dataset, "--device", "cpu", "--flops-budget", BUDGET, weights=weights, env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and max(len(line) for line in result.output.splitlines()) <= 80
    for name in ("FSRCNN-O", "ClassSR-FSRCNN", "Bicubic"):  # the budget row's longer name wraps
        assert name in result.output


# -- a set's own LR images, and images too small to score ---------------------------------------------------


def bicubic_x4(lr: np.ndarray) -> np.ndarray:
    return np.round(np.clip(imresize(lr.astype(np.float32) / 255, scale=4), 0, 1) * 255).astype(np.uint8)


def test_pair_names_of_the_usual_sets():
    assert pair_key("bird_HR_x4") == pair_key("bird_LR_x4") == "bird"  # Set5, Set14
    assert pair_key("0801x4") == "0801" and pair_key("0801") == "0801"  # DIV2K
    assert pair_key("img_001_SRF_4_HR") == pair_key("img_001_SRF_4_LR") == "img_001_SRF_4"  # SelfExSR
    assert pair_key("baby") == "baby" and pair_key("CHR") == "CHR" and pair_key("HR") == "HR"


def test_a_sets_own_lr_images_are_paired_by_the_usual_names_and_the_report_says_so(weights, tmp_path):
    hr = synthetic_hr(64, 48, 0)
    given = np.clip(bicubic_lr(hr).astype(int) + 12, 0, 255).astype(np.uint8)  # not what bench would make
    expected = independent_psnr(bicubic_x4(given), hr)
    root = tmp_path / "Set5"
    write_png(root / "HR" / "bird_HR_x4.png", hr)
    write_png(root / "LR" / "bird_LR_x4.png", given)
    write_png(root / "HR" / "baby_HR_x4.png", synthetic_hr(48, 48, 1))  # no LR of its own: one is made
    before = {path: path.read_bytes() for path in root.rglob("*.png")}
    result = bench(root, "--json", "--device", "cpu", "--report", tmp_path / "report", weights=weights)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["lr_source"] == {"baby_HR_x4": "made", "bird_HR_x4": "given"}
    assert document["lr_folder"] == str(root / "LR")
    bird = row(document, "bicubic")["per_image"][1]
    assert bird["image"] == "bird_HR_x4" and bird["psnr"] == pytest.approx(expected, abs=1e-3)
    with open(tmp_path / "report" / "per_image.csv", newline="") as handle:
        assert {(line["image"], line["lr"]) for line in csv.DictReader(handle)} == {
            ("baby_HR_x4", "made"),
            ("bird_HR_x4", "given"),
        }
    text = bench(root, "--device", "cpu", weights=weights, env={"COLUMNS": "300"}).output
    made = "made from HR (MATLAB bicubic x1/4) for 1 image: baby_HR_x4"
    assert f"LR: the set's own ({root / 'LR'}) for 1 image, {made}\n" in text
    assert {path: path.read_bytes() for path in root.rglob("*.png")} == before

    div2k = tmp_path / "DIV2K"  # HR/0801.png with LR_bicubic/X4/0801x4.png
    write_png(div2k / "HR" / "0801.png", hr)
    write_png(div2k / "LR_bicubic" / "X4" / "0801x4.png", given)
    document = json.loads(bench(div2k, "--json", "--device", "cpu", weights=weights).stdout)
    assert document["lr_source"] == {"0801": "given"}
    assert row(document, "bicubic")["per_image"][0]["psnr"] == pytest.approx(expected, abs=1e-3)


def test_an_lr_folder_with_files_that_pair_with_no_hr_image_is_refused_naming_them(weights, tmp_path):
    hr = synthetic_hr(64, 48, 0)
    root = tmp_path / "Set"
    write_png(root / "HR" / "bird_HR_x4.png", hr)
    write_png(root / "LR" / "bird_LR_x4.png", bicubic_lr(hr))
    write_png(root / "LR" / "butterfly_LR_x4.png", bicubic_lr(hr))
    write_png(root / "LR" / "notes.png", bicubic_lr(hr))
    line = one_line_error(bench(root, weights=weights))
    assert f"{root / 'LR'}: butterfly_LR_x4.png, notes.png match no HR image" in line
    (root / "LR" / "butterfly_LR_x4.png").unlink()
    (root / "LR" / "notes.png").rename(root / "LR" / "bird.png")  # a second LR image of bird_HR_x4.png
    assert "bird.png and bird_LR_x4.png are both LR images of bird_HR_x4.png" in one_line_error(
        bench(root, weights=weights)
    )


def test_an_image_too_small_to_score_is_skipped_with_a_note(dataset, weights, tmp_path):
    root = tmp_path / "Small"
    for folder in ("HR", "LR"):
        (root / folder).mkdir(parents=True)
        (root / folder / "a.png").write_bytes((dataset / folder / "a.png").read_bytes())
    write_png(root / "HR" / "icon.png", synthetic_hr(10, 40, 3))  # under 12 px: nothing left after the border
    result = bench(root, "--json", "--device", "cpu", weights=weights)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["images"] == 1 and [p["image"] for p in row(document, "classsr")["per_image"]] == ["a"]
    assert document["skipped"] == {"icon": "too small for x4 with a 4-pixel border (under 12 px)"}
    # the terminal folds a long path anywhere, at 80 columns: compare without the whitespace
    text = "".join(bench(root, "--device", "cpu", weights=weights).output.split())
    assert "".join(f"note: skipped {root / 'HR' / 'icon.png'}: too small for x4".split()) in text
    (root / "HR" / "a.png").unlink()
    (root / "LR" / "a.png").unlink()
    assert "no image large enough to score" in one_line_error(bench(root, weights=weights))
