"""prepare-data, the sub-image dataset, make-testsets and find_dataset, on tiny synthetic photos."""

import json
import os
import pickle
import time

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from classsr_cli.cli import app
from classsr_cli.data.dataset import SubImageDataset, dihedral, prepared_info, val_images
from classsr_cli.data.prepare import (
    INDEX_DTYPE,
    SPLIT_TRAIN,
    choose_val_photos,
    parse_scales,
    prepare_data,
    subimage_positions,
)
from classsr_cli.data.ranking import assign_classes, classes_from_thresholds, resolve_rank_model
from classsr_cli.data.testsets import find_dataset, make_testsets, parse_sizes
from classsr_cli.errors import DataError, InputError, OutputError
from classsr_cli.imaging.bicubic import imresize, matlab_uint8

PHOTO_SIZES = {"a_flat.png": (200, 264), "b_mixed.png": (180, 300), "c_busy.png": (256, 256)}
SCALES = (1.0, 0.8, 0.6)


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients with a noisy block and stripes: sub-images of every difficulty."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    photo = np.stack([xx * 255 // width, yy * 255 // height, (xx + 2 * yy) * 128 // (width + height)], -1)
    photo[height // 2 :, : width // 2] = rng.integers(0, 256, (height - height // 2, width // 2, 3))
    photo[: height // 3, width // 2 :, 2] = ((xx[: height // 3, width // 2 :] // 3) % 2) * 200
    return photo.astype(np.uint8)


def write_photo(path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def read_png(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for seed, (name, (height, width)) in enumerate(PHOTO_SIZES.items()):
        write_photo(folder / name, synthetic_photo(height, width, seed))
    (folder / "notes.txt").write_text("not a photo, ignored")
    return folder


def run_prepare(src, out, **options):
    settings = dict(scales=SCALES, classes=3, rank_model="bicubic", val_fraction=0.34, workers=1, seed=0)
    settings.update(options)
    return prepare_data(src, out, show_progress=False, **settings)


@pytest.fixture(scope="module")
def prepared(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return out, run_prepare(photos, out)


# -- pure pieces ----------------------------------------------------------------------------------------


def test_positions_cover_the_edge():
    np.testing.assert_array_equal(subimage_positions(80, 32, 16), [0, 16, 32, 48])
    np.testing.assert_array_equal(
        subimage_positions(75, 32, 16), [0, 16, 32, 43]
    )  # last one flush with the edge
    np.testing.assert_array_equal(subimage_positions(32, 32, 16), [0])
    assert len(subimage_positions(31, 32, 16)) == 0


def test_assign_classes_equal_sizes_and_falling_thresholds():
    psnr = np.random.default_rng(0).normal(30, 5, 1001).astype(np.float32)
    labels, thresholds = assign_classes(psnr, 3)
    assert np.bincount(labels).tolist() == [333, 334, 334]
    assert thresholds[0] > thresholds[1]
    assert psnr[labels == 0].min() >= psnr[labels == 1].max()  # class 0 = simple = highest PSNR
    np.testing.assert_array_equal(classes_from_thresholds(psnr, thresholds), labels)
    tied, _ = assign_classes(np.full(10, 40.0, dtype=np.float32), 3)  # ties still split evenly
    assert np.bincount(tied).tolist() == [3, 3, 4]
    with pytest.raises(DataError):
        assign_classes(np.zeros(2, dtype=np.float32), 3)


def test_val_choice_is_seeded_whole_photos():
    assert choose_val_photos(10, 0.0, 0).sum() == 0
    assert choose_val_photos(10, 0.2, 0).sum() == 2
    assert choose_val_photos(3, 0.1, 0).sum() == 1  # at least one when asked for
    assert choose_val_photos(1, 0.5, 0).sum() == 0  # never the only photo
    np.testing.assert_array_equal(choose_val_photos(50, 0.1, 7), choose_val_photos(50, 0.1, 7))


def test_option_errors():
    assert parse_scales("1.0, 0.9,0.6") == (1.0, 0.9, 0.6)
    for bad in ("1.0,abc", "1.2", "0", "0.9,0.9", ""):
        with pytest.raises(DataError):
            parse_scales(bad)
    with pytest.raises(DataError):
        resolve_rank_model("no-such-model-or-file")


def test_a_family_with_no_base_network_ranks_with_its_classsr_models_hardest_branch(tmp_path, monkeypatch):
    from classsr_cli.data.ranking import NetworkRanker
    from classsr_cli.models import create
    from classsr_cli.weights import add_weights, save_model

    monkeypatch.setenv("CLASSSR_WEIGHTS", str(tmp_path))
    torch.manual_seed(0)
    model = create("srresnet", [8, 12, 16])
    add_weights(save_model(model, tmp_path / "src" / "sr.safetensors", "srresnet"))
    rank = resolve_rank_model("srresnet")
    assert rank.kind == "family" and ":classsr:" in rank.identity
    ranker = NetworkRanker.from_rank(rank, 4)
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():  # its hardest branch, as `bench` takes it
        assert torch.allclose(ranker.model(lr), model.branches[-1].eval()(lr), atol=1e-5)
    with pytest.raises(DataError, match="no rcan weights are shipped"):
        resolve_rank_model("rcan")


def test_default_rank_model_is_bicubic_without_shipped_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSSR_WEIGHTS", str(tmp_path))  # an empty weights folder: nothing shipped
    assert resolve_rank_model(None).kind == "bicubic"


# -- prepare-data ---------------------------------------------------------------------------------------


def test_prepare_counts_classes_and_format(prepared):
    out, summary = prepared
    meta = prepared_info(out)
    index = np.load(out / "index.npy")
    assert index.dtype == INDEX_DTYPE
    assert summary["images"] == 3 and summary["val_images"] == 1 and summary["skipped"] == []
    # every LR image of every scale is covered by the grid, last row/column flush with the edges
    expected = 0
    for image in meta["images"]:
        for scale_id, entry in enumerate(image["scales"]):
            lr_w, lr_h = entry["lr_size"]
            count = len(subimage_positions(lr_h, 32, 16)) * len(subimage_positions(lr_w, 32, 16))
            assert entry["subimages"] == count
            expected += count
            rows = index[(index["image"] == image["id"]) & (index["scale"] == scale_id)]
            if count:
                assert rows["y"].max() + 32 == lr_h and rows["x"].max() + 32 == lr_w
    assert summary["subimages"] == len(index) == expected
    train = index["split"] == SPLIT_TRAIN
    assert summary["train_subimages"] == train.sum()
    counts = summary["class_counts"]
    assert sum(counts) == train.sum() and max(counts) - min(counts) <= 1
    assert (
        len(summary["psnr_thresholds"]) == 2 and summary["psnr_thresholds"][0] > summary["psnr_thresholds"][1]
    )
    # validation sub-images are classed by the training thresholds
    np.testing.assert_array_equal(
        index["cls"][~train], classes_from_thresholds(index["psnr"][~train], meta["psnr_thresholds"])
    )
    assert meta["rank_model"]["kind"] == "bicubic" and meta["arguments"]["scales"] == list(SCALES)
    assert sorted(image["split"] for image in meta["images"]) == ["train", "train", "val"]
    assert not list(out.rglob("*.png"))  # nothing stored one file per sub-image


def test_stored_images_are_the_bicubic_pairs(prepared, photos):
    out, _ = prepared
    meta = prepared_info(out)
    image = meta["images"][0]
    full = image["scales"][0]
    hr = np.load(out / full["hr"], mmap_mode="r")
    lr = np.load(out / full["lr"], mmap_mode="r")
    assert hr.dtype == lr.dtype == np.uint8 and hr.shape[0] % 4 == 0 and hr.shape[1] % 4 == 0
    photo = read_png(photos / image["name"])
    np.testing.assert_array_equal(
        hr, photo[: hr.shape[0], : hr.shape[1]]
    )  # scale 1.0: the photo, cropped to /4
    np.testing.assert_array_equal(lr, matlab_uint8(imresize(np.asarray(hr, np.float64), 0.25)))
    smaller = image["scales"][1]
    hr_small = np.load(out / smaller["hr"])
    scaled = matlab_uint8(imresize(photo.astype(np.float64), SCALES[1]))
    np.testing.assert_array_equal(hr_small, scaled[: hr_small.shape[0], : hr_small.shape[1]])


def test_psnr_is_the_bicubic_upscale_of_the_subimage(prepared):
    out, _ = prepared
    meta = prepared_info(out)
    index = np.load(out / "index.npy")
    for row in index[:: max(1, len(index) // 5)]:
        entry = meta["images"][row["image"]]["scales"][row["scale"]]
        lr = np.load(out / entry["lr"])[row["y"] : row["y"] + 32, row["x"] : row["x"] + 32]
        hr = np.load(out / entry["hr"])[row["y"] * 4 : row["y"] * 4 + 128, row["x"] * 4 : row["x"] * 4 + 128]
        sr = matlab_uint8(imresize(lr.astype(np.float64), 4)).astype(np.float64)
        mse = np.mean((sr - hr) ** 2)
        assert row["psnr"] == pytest.approx(min(100.0, 10 * np.log10(255**2 / mse)), abs=1e-3)


def test_resume_skips_finished_photos_and_redoes_missing_ones(photos, tmp_path):
    out = tmp_path / "prep"
    first = run_prepare(photos, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = run_prepare(photos, out)
    assert again["resumed"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps  # nothing rewritten
    next(iter(sorted((out / "parts").iterdir()))).unlink()  # as if interrupted before this photo finished
    # the ranking is recomputed from all per-image PSNRs; other settings over a finished set need overwrite
    redone = run_prepare(photos, out, classes=2, overwrite=True)
    assert redone["resumed"] == 2
    assert redone["subimages"] == first["subimages"] and len(redone["class_counts"]) == 2


def test_a_finished_set_is_not_prepared_again_with_other_settings_unless_asked(photos, tmp_path):
    out = tmp_path / "prep"
    run_prepare(photos, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for other in ({"scales": (1.0,)}, {"classes": 2}, {"seed": 1}):
        with pytest.raises(DataError, match="other settings") as refused:
            run_prepare(photos, out, **other)
        assert "--overwrite" in str(refused.value) and next(iter(other)) in str(refused.value)
    other_photos = tmp_path / "fewer"
    other_photos.mkdir()
    (other_photos / "a_flat.png").write_bytes((photos / "a_flat.png").read_bytes())
    with pytest.raises(DataError, match="src"):
        run_prepare(other_photos, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # index, meta untouched
    assert run_prepare(photos, out)["resumed"] == 3  # the same settings resume


def test_deterministic_across_runs_and_worker_counts(photos, prepared, tmp_path):
    out, summary = prepared
    other = run_prepare(photos, tmp_path / "again", workers=2)
    np.testing.assert_array_equal(np.load(out / "index.npy"), np.load(tmp_path / "again" / "index.npy"))
    assert other["psnr_thresholds"] == summary["psnr_thresholds"]
    assert other["class_counts"] == summary["class_counts"]


def test_unreadable_photo_is_skipped_and_listed(photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a_flat.png", "c_busy.png"):
        (src / name).write_bytes((photos / name).read_bytes())
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    summary = run_prepare(src, tmp_path / "out", val_fraction=0)
    assert summary["images"] == 2 and summary["skipped"] == ["broken.jpg"]
    assert "broken.jpg" in summary["skipped_reasons"]["broken.jpg"]  # the reader's one-line reason
    assert prepared_info(tmp_path / "out")["skipped"][0]["name"] == "broken.jpg"


def test_too_small_photo_is_skipped(photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.png").write_bytes((photos / "c_busy.png").read_bytes())
    write_photo(src / "tiny.png", synthetic_photo(60, 90, 1))
    summary = run_prepare(src, tmp_path / "out", val_fraction=0)
    assert summary["skipped"] == ["tiny.png"] and "too small" in summary["skipped_reasons"]["tiny.png"]


def test_missing_or_empty_source(tmp_path):
    with pytest.raises(InputError):
        run_prepare(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        run_prepare(tmp_path / "empty", tmp_path / "out")


def test_rank_with_a_weights_file_uses_the_hardest_branch(photos, tmp_path):
    from classsr_cli.models import create
    from classsr_cli.weights import save_model

    torch.manual_seed(0)
    path = save_model(create("fsrcnn", [16, 24]), tmp_path / "tiny.safetensors", "fsrcnn")
    src = tmp_path / "src"
    src.mkdir()
    (src / "c_busy.png").write_bytes((photos / "c_busy.png").read_bytes())
    summary = run_prepare(
        src, tmp_path / "out", scales=(1.0,), classes=2, rank_model=str(path), val_fraction=0
    )
    assert summary["rank_model"] == str(path.resolve()) and summary["subimages"] == 9
    psnr = np.load(tmp_path / "out" / "index.npy")["psnr"]
    assert np.all(np.isfinite(psnr)) and psnr.std() > 0


def test_cli_prepare_data_json(photos, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "prepare-data",
            str(photos),
            str(tmp_path / "out"),
            "--scales",
            "1.0,0.7",
            "--rank-model",
            "bicubic",
            "--workers",
            "1",
            "--val-fraction",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # exactly one JSON document on stdout
    for key, kind in (
        ("images", int),
        ("subimages", int),
        ("class_counts", list),
        ("psnr_thresholds", list),
        ("skipped", list),
    ):
        assert isinstance(document[key], kind)
    assert document["images"] == 3 and len(document["class_counts"]) == 3 and document["val_images"] == 0
    assert "bicubic" in result.stderr


def test_cli_prepare_data_user_error(tmp_path):
    result = CliRunner().invoke(app, ["prepare-data", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "error:" in result.stderr and "Traceback" not in result.output


# -- dataset --------------------------------------------------------------------------------------------


def test_dataset_shapes_ranges_and_class_filter(prepared):
    out, summary = prepared
    train = SubImageDataset(out, "train", augment=False)
    assert len(train) == summary["train_subimages"] and train.class_counts() == summary["class_counts"]
    lr, hr, cls = train[0]
    assert lr.shape == (3, 32, 32) and hr.shape == (3, 128, 128) and lr.dtype == hr.dtype == torch.float32
    assert 0 <= lr.min() and lr.max() <= 1 and 0 <= hr.min() and hr.max() <= 1 and cls in (0, 1, 2)
    hard = SubImageDataset(out, "train", classes=[2])
    assert len(hard) == summary["class_counts"][2] and all(hard[i][2] == 2 for i in range(0, len(hard), 7))
    assert len(SubImageDataset(out, "val")) == summary["val_subimages"]
    with pytest.raises(DataError):
        SubImageDataset(out, "train", classes=[3])
    with pytest.raises(DataError):
        SubImageDataset(out, "test")


def test_unaugmented_lr_is_the_bicubic_reduction_of_hr(prepared):
    out, _ = prepared
    dataset = SubImageDataset(out, "train", augment=False)
    for item in range(0, len(dataset), max(1, len(dataset) // 6)):
        lr, hr, _ = dataset[item]
        hr8 = (hr.permute(1, 2, 0).numpy() * 255).round()
        lr8 = (lr.permute(1, 2, 0).numpy() * 255).round()
        reduced = matlab_uint8(imresize(hr8, 0.25)).astype(np.float64)
        # the stored LR was reduced from the whole image: equal away from the crop's border (kernel: 2 px)
        assert np.abs(reduced[3:-3, 3:-3] - lr8[3:-3, 3:-3]).max() <= 1


def test_augmentation_moves_lr_and_hr_together(prepared):
    out, _ = prepared
    plain = SubImageDataset(out, "train", classes=[2], augment=False)
    augmented = SubImageDataset(out, "train", classes=[2], augment=True, seed=5)
    seen = set()
    for _ in range(6):
        for item in range(min(len(plain), 12)):
            lr0, hr0, _ = plain[item]
            lr1, hr1, _ = augmented[item]
            lr0, hr0 = lr0.permute(1, 2, 0).numpy(), hr0.permute(1, 2, 0).numpy()
            lr1, hr1 = lr1.permute(1, 2, 0).numpy(), hr1.permute(1, 2, 0).numpy()
            matches = [t for t in range(8) if np.array_equal(dihedral(lr0, t), lr1)]
            assert any(np.array_equal(dihedral(hr0, t), hr1) for t in matches)
            seen.update(matches)
    assert len(seen) == 8


def test_dataset_in_dataloader_workers(prepared):
    out, _ = prepared
    dataset = SubImageDataset(out, "train")
    dataset[0]  # maps opened here must not travel to the workers
    assert pickle.loads(pickle.dumps(dataset))._arrays == {}
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2)
    lr, hr, cls = next(iter(loader))
    assert lr.shape == (8, 3, 32, 32) and hr.shape == (8, 3, 128, 128) and cls.shape == (8,)


def test_val_images_are_whole_held_out_photos(prepared):
    out, _ = prepared
    pairs = val_images(out)
    meta = prepared_info(out)
    assert [name for name, _, _ in pairs] == [i["name"] for i in meta["images"] if i["split"] == "val"]
    name, hr_path, lr_path = pairs[0]
    hr, lr = np.load(hr_path, mmap_mode="r"), np.load(lr_path, mmap_mode="r")
    assert hr.dtype == np.uint8 and hr.shape == (lr.shape[0] * 4, lr.shape[1] * 4, 3)


def test_prepared_info_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepared_info(tmp_path / "missing")
    with pytest.raises(DataError, match="no meta.json"):
        prepared_info(tmp_path)
    (tmp_path / "meta.json").write_text("{ not json")
    with pytest.raises(DataError, match="unreadable"):
        prepared_info(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not a classsr"):
        prepared_info(tmp_path)


# -- test sets and find_dataset -------------------------------------------------------------------------


def test_make_testsets_by_long_side(photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "wide.png").write_bytes((photos / "b_mixed.png").read_bytes())  # 300 x 180
    write_photo(src / "small.png", synthetic_photo(90, 120, 4))  # long side 120
    (src / "broken.png").write_bytes(b"not a png")
    summary = make_testsets(src, tmp_path / "sets", parse_sizes("256,full"), show_progress=False)
    assert summary["mode"] == "generic" and set(summary["sets"]) == {"Test256", "TestFull"}
    assert summary["skipped"] == ["broken.png"] and summary["sets"]["TestFull"]["skipped"] == ["broken.png"]
    assert summary["sets"]["Test256"]["images"] == 1 and summary["sets"]["Test256"]["too_small"] == [
        "small.png"
    ]
    hr = read_png(tmp_path / "sets" / "Test256" / "HR" / "wide.png")
    lr = read_png(tmp_path / "sets" / "Test256" / "LR" / "wide.png")
    assert hr.shape == (152, 256, 3)  # 300x180 -> 256x154 (long side 256), cropped to a multiple of 4
    np.testing.assert_array_equal(lr, matlab_uint8(imresize(hr.astype(np.float64), 0.25)))
    full = read_png(tmp_path / "sets" / "TestFull" / "HR" / "small.png")
    assert full.shape == (88, 120, 3)
    again = make_testsets(src, tmp_path / "sets", parse_sizes("256,full"), show_progress=False)
    assert again["sets"]["TestFull"]["kept"] == 2  # finished pairs are not redone


def test_make_testsets_refuses_to_replace_or_leave_stale_pairs_unless_asked(photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a_flat.png", "c_busy.png"):
        (src / name).write_bytes((photos / name).read_bytes())
    sets = tmp_path / "sets"
    make_testsets(src, sets, parse_sizes("full"), show_progress=False)
    kept = (sets / "TestFull" / "HR" / "a_flat.png").read_bytes()
    # a photo removed from the source: its pair would be scored by bench; a photo newer than its pair
    (src / "c_busy.png").unlink()
    os.utime(src / "a_flat.png", (time.time() + 60, time.time() + 60))
    with pytest.raises(OutputError) as refused:
        make_testsets(src, sets, parse_sizes("full"), show_progress=False)
    message = str(refused.value)
    assert "HR/c_busy.png" in message and "HR/a_flat.png" in message and "--overwrite" in message
    assert (sets / "TestFull" / "HR" / "c_busy.png").exists()  # nothing changed
    assert (sets / "TestFull" / "HR" / "a_flat.png").read_bytes() == kept
    summary = make_testsets(src, sets, parse_sizes("full"), show_progress=False, overwrite=True)
    assert summary["sets"]["TestFull"]["images"] == 1
    assert sorted(p.name for p in (sets / "TestFull" / "HR").iterdir()) == ["a_flat.png"]
    assert sorted(p.name for p in (sets / "TestFull" / "LR").iterdir()) == ["a_flat.png"]
    # a set no photo is large enough for gets no folders
    make_testsets(src, tmp_path / "small", parse_sizes("8k"), show_progress=False)
    assert not (tmp_path / "small" / "Test8K").exists()


def test_make_testsets_from_div8k_names(tmp_path):
    src = tmp_path / "div8k"
    src.mkdir()
    for number in (1201, 1301, 1401, 1600):
        write_photo(src / f"{number}.png", synthetic_photo(96, 128, number))
    summary = make_testsets(src, tmp_path / "sets", parse_sizes("2k,4k,full"), show_progress=False)
    assert summary["mode"] == "div8k"
    sets = tmp_path / "sets"
    assert [p.name for p in (sets / "Test2K" / "HR").iterdir()] == ["1201.png"]
    assert read_png(sets / "Test2K" / "HR" / "1201.png").shape == (24, 32, 3)  # x1/4 of DIV8K
    assert read_png(sets / "Test4K" / "HR" / "1301.png").shape == (48, 64, 3)  # x1/2
    assert read_png(sets / "Test8K" / "HR" / "1401.png").shape == (96, 128, 3)  # as it is
    assert read_png(sets / "Test8K" / "LR" / "1401.png").shape == (24, 32, 3)
    with pytest.raises(DataError):
        make_testsets(src, tmp_path / "sets", parse_sizes("256"), show_progress=False)


def test_cli_make_testsets_json(photos, tmp_path):
    result = CliRunner().invoke(
        app, ["make-testsets", str(photos), str(tmp_path / "sets"), "--sizes", "full", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sets"]["TestFull"]["images"] == 3
    bad = CliRunner().invoke(app, ["make-testsets", str(photos), str(tmp_path / "sets"), "--sizes", "3q"])
    assert bad.exit_code == 2 and "error:" in bad.stderr


def test_find_dataset_paths_names_and_env(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "Test8K" / "HR").mkdir(parents=True)
    assert find_dataset(root / "Test8K") == root / "Test8K"  # a path is taken as it is
    assert find_dataset("Test8K", data_root=root) == root / "Test8K"
    assert find_dataset("test8k", data_root=root) == root / "Test8K"  # names ignore case
    monkeypatch.setenv("CLASSSR_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    assert find_dataset("Test8K") == root / "Test8K"
    monkeypatch.delenv("CLASSSR_DATA")
    (tmp_path / "datasets" / "Test2K").mkdir(parents=True)
    assert find_dataset("Test2K").resolve() == (tmp_path / "datasets" / "Test2K").resolve()  # ./datasets
    with pytest.raises(DataError, match="Test4K") as error:
        find_dataset("Test4K", data_root=root)
    assert str(root / "Test4K") in str(error.value) and "CLASSSR_DATA" in str(error.value)
    assert os.environ.get("CLASSSR_DATA") is None
