"""The GPU job on the CPU: training pairs made on the device, packed weights, a tiny dry run end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_run
from classsr_cli.errors import OutputError, WeightsError
from classsr_cli.models import create_base
from classsr_cli.train.data import dihedral
from classsr_cli.train.device_data import DevicePhotos, fixed_crops, pyramid
from classsr_cli.train.packing import fp16_state, load_packed, pack, plan_parts, write_packed
from classsr_cli.weights import load_weights

ROOT = Path(__file__).resolve().parent.parent


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    wave = np.sin(x / (4 + seed)) * 60 + np.cos(y / (6 + seed)) * 60 + 128
    photo = np.stack([wave, 0.8 * wave, 255 - wave], -1) + rng.normal(0, 8, (height, width, 3))
    photo[: height // 3] = 90 + 20 * seed  # a flat band, as skies are
    return np.clip(photo, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    for seed, (height, width) in enumerate([(176, 208), (200, 240)]):
        cv2.imwrite(str(folder / f"photo{seed}.png"), synthetic_photo(height, width, seed)[:, :, ::-1])
    return folder


# -- training pairs ----------------------------------------------------------------------------------


def test_crops_are_the_dihedral_transforms_of_the_pyramid_at_the_drawn_positions():
    data = DevicePhotos([synthetic_photo(150, 203, 0), synthetic_photo(96, 120, 1)], "cpu", patch=8)
    assert len(data) == 10  # 2 photos x 5 scales, all large enough for a 32x32 HR crop
    positions = data.draw(128, torch.Generator().manual_seed(0))
    low, high = data.crops(positions)
    assert low.shape == (128, 3, 8, 8) and high.shape == (128, 3, 32, 32)
    assert low.is_contiguous(memory_format=torch.channels_last)
    assert set(positions.code.tolist()) == set(range(8)) and len(set(positions.image.tolist())) > 5
    for b in range(128):
        i, y, x, code = (int(v[b]) for v in (positions.image, positions.y, positions.x, positions.code))
        lr_crop = data.lr_image(i)[y : y + 8, x : x + 8].permute(2, 0, 1)
        hr_crop = data.hr_image(i)[4 * y : 4 * y + 32, 4 * x : 4 * x + 32].permute(2, 0, 1)
        assert torch.equal(low[b], dihedral(lr_crop, code).float() / 255)
        assert torch.equal(high[b], dihedral(hr_crop, code).float() / 255)


def test_the_pyramid_is_the_one_prepare_data_writes(tmp_path):
    import cv2

    from classsr_cli.data.prepare import photo_key, prepare_data, scale_tag
    from classsr_cli.imaging.photos import read_rgb8

    source = tmp_path / "photos"
    source.mkdir()
    cv2.imwrite(str(source / "a.png"), synthetic_photo(200, 260, 2)[:, :, ::-1])
    prepare_data(source, tmp_path / "prepared", scales=(1.0, 0.7), classes=2, rank_model="bicubic",
                 val_fraction=0.0, workers=1, show_progress=False)  # fmt: skip
    images = tmp_path / "prepared" / "images"
    pairs = pyramid(read_rgb8(source / "a.png"), torch.device("cpu"), (1.0, 0.7))
    for factor, (hr, lr) in zip((1.0, 0.7), pairs, strict=True):
        stem = f"{photo_key(source / 'a.png')}_{scale_tag(factor)}"
        assert np.array_equal(hr.numpy(), np.load(images / f"{stem}_hr.npy"))
        assert np.array_equal(lr.numpy(), np.load(images / f"{stem}_lr.npy"))


def test_fixed_crops_are_an_even_grid_and_refuse_small_photos():
    from classsr_cli.errors import DataError

    low, high = fixed_crops(synthetic_photo(256, 256, 0), "cpu", count=4, size=16)
    assert low.shape == (4, 3, 16, 16) and high.shape == (4, 64, 64, 3) and high.dtype == np.uint8
    again, _ = fixed_crops(synthetic_photo(256, 256, 0), "cpu", count=4, size=16)
    assert torch.equal(low, again)
    with pytest.raises(DataError, match="smaller than one crop"):
        fixed_crops(synthetic_photo(40, 40, 0), "cpu", count=4, size=16)


# -- packing -----------------------------------------------------------------------------------------


def test_a_large_network_is_split_and_reassembled_exactly(tmp_path):
    torch.manual_seed(0)
    models = {f"fsrcnn-{w}": create_base("fsrcnn", w) for w in (16, 56)}
    states = {name: fp16_state(model) for name, model in models.items()}
    file_bytes = 40_000  # FSRCNN-56 is 49 KB in fp16: two shards
    paths = write_packed(
        states, tmp_path, "part1", file_bytes, generation=3, info={"fsrcnn-56": {"steps": 7}}
    )
    assert len(paths) >= 2 and all(path.stat().st_size <= file_bytes for path in paths)
    loaded = load_packed([tmp_path])
    assert sorted(loaded) == ["fsrcnn-16", "fsrcnn-56"]
    for name, model in loaded.items():
        assert model.width == int(name.split("-")[1]) and not model.training
        for key, value in model.state_dict().items():
            assert value.dtype == torch.float32 and torch.equal(value, states[name][key].float())

    shard = next(path for path in paths if "fsrcnn-56/tail_conv.bias" in load_file_keys(path))
    others = [path for path in paths if path != shard]
    with pytest.raises(WeightsError, match="missing"):
        load_packed(others)
    assert "fsrcnn-56" not in load_packed(others, complete_only=False)
    stale = tmp_path / "stale"
    write_packed(states, stale, "part1", file_bytes, generation=4)
    with pytest.raises(WeightsError, match="different checkpoints"):
        load_packed([*others, stale / shard.name])


def load_file_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def test_parts_take_networks_by_priority_within_their_limits():
    states = {f"fsrcnn-{w}": fp16_state(create_base("fsrcnn", w)) for w in (16, 36, 56)}
    parts = plan_parts(states, ["fsrcnn-56", "fsrcnn-36", "fsrcnn-16"], 70_000, 6, 1_000_000)
    assert parts == [["fsrcnn-56"], ["fsrcnn-36", "fsrcnn-16"]]  # 56 first; 16 does not fit beside it
    for part in parts:
        files = pack({name: states[name] for name in part}, 1_000_000, "p")
        assert sum(f.nbytes for f in files) <= 70_000
    with pytest.raises(WeightsError, match="does not fit"):
        plan_parts(states, ["fsrcnn-56"], 10_000, 6, 1_000_000)


def test_the_seconds_go_to_the_networks_by_their_cost():
    networks = []
    for width, per_step in ((16, 0.01), (56, 0.02), (64, 1.0)):
        network = gpu_run.Network("fsrcnn", width, None, 1e-3, None, 0, batch=8, probe={8: per_step})
        networks.append(network)
    gpu_run.share_seconds(networks, 100.0)
    budgets = [n.budget for n in networks]
    assert sum(budgets) == pytest.approx(100.0)
    assert min(budgets) >= gpu_run.FLOOR_SHARE * 100 and budgets[0] < budgets[1] < budgets[2]
    # beyond the floor, seconds are proportional to the cost of a sample
    floor = gpu_run.FLOOR_SHARE * 100
    assert (budgets[2] - floor) / (budgets[1] - floor) == pytest.approx(50.0)


# -- the dry run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("dry")
    out, keep = root / "out", root / "keep"
    arguments = ["--dry-run", "--photos", str(photos), "--out", str(out), "--keep", str(keep)]
    # a part budget of 60 KiB puts the three FSRCNN networks in separate parts, as RCAN-36 is on a GPU
    arguments += [
        "--seconds",
        "6",
        "--families",
        "fsrcnn",
        "--no-checks",
        "--no-engine",
        "--part-mib",
        "0.06",
    ]
    report = gpu_run.main(arguments)
    return report, out, keep, root


def test_the_dry_run_writes_a_report_and_part_one(dry_run):
    report, out, keep, _ = dry_run
    assert json.loads((out / gpu_run.REPORT).read_text()) == json.loads(json.dumps(report))
    assert report["dry_run"] and report["data"]["held_out"] == "photo1.png"  # the larger photo
    assert report["data"]["train_photos"] == 1 and report["data"]["scaled_images"] == 5
    assert sorted(report["networks"]) == ["fsrcnn-16", "fsrcnn-36", "fsrcnn-56"]
    for record in report["networks"].values():
        assert record["steps"] >= gpu_run.DRY.min_steps and record["samples"] == record["steps"] * 2
        assert np.isfinite(record["loss"]) and np.isfinite(record["held_out_psnr"])
    split = report["split"]["seconds"]
    assert sum(split.values()) == pytest.approx(report["split"]["training_seconds"], abs=0.2)
    parts = report["parts"]
    assert [len(part["networks"]) for part in parts] == [1, 1, 1] and parts[0]["networks"] == ["fsrcnn-56"]
    assert sorted(p.name for p in out.iterdir()) == sorted([gpu_run.LOG, gpu_run.REPORT, *parts[0]["files"]])
    assert "engine" not in report  # --no-engine: test_the_engine_table times it without a deadline


def test_the_engine_table(tmp_path, monkeypatch):
    pytest.importorskip("pyvips")  # the CLI run reads and writes files
    networks = gpu_run.build_networks(["fsrcnn"], torch.device("cpu"), seed=0)
    photo = synthetic_photo(208, 272, 3)
    log = gpu_run.Log(tmp_path / "log.txt")

    def table():
        deadline = time.monotonic() + 600
        return gpu_run.engine_table(
            networks, photo, torch.device("cpu"), gpu_run.DRY, deadline, tmp_path, log
        )

    (shipped,) = table()
    monkeypatch.setattr("classsr_cli.weights.shipped_entry", lambda *args, **kwargs: None)
    (untrained,) = table()  # as for SRResNet and RCAN: the trained networks behind a fresh Class-Module
    assert shipped["routing"] == "shipped Class-Module"
    assert untrained["routing"].startswith("untrained") and untrained["flops_ratio"] <= 0.6 + 1e-6
    for row in (shipped, untrained):
        assert row["family"] == "fsrcnn" and row["input"] == "64x48" and row["tiles"] == 6
        assert sum(row["class_counts"]) == 6 and row["classsr_s"] > 0 and row["base_s"] > 0
        assert row["cli_s"] > 0 and row["cli_report_s"] > 0
        assert row["compare_batched_s"] > 0 and row["compare_one_tile_s"] > 0
    table_lines = gpu_run.format_engine_table([shipped, untrained]).splitlines()
    assert len(table_lines) == 4 and table_lines[2].startswith("| fsrcnn | ")


def test_collected_parts_load_into_the_project_models_and_export(dry_run, photos):
    report, out, keep, root = dry_run
    folders = [out]
    for part in (2, 3):
        folder = root / f"collect{part}"
        gpu_run.main(["--collect", str(part), "--out", str(folder), "--keep", str(keep)])
        assert (folder / gpu_run.REPORT).exists()
        folders.append(folder)
    models = load_packed(folders)
    assert sorted(models) == sorted(report["networks"])

    # the held-out PSNR recomputed from the fp16 files is the one the run recorded from its fp32 networks
    held_out = fixed_crops(gpu_run.read_photo(photos / "photo1.png"), "cpu", gpu_run.DRY.held_out_crops, 24)
    for name, model in models.items():
        recorded = report["networks"][name]["held_out_psnr"]
        assert gpu_run.held_out_psnr(model, *held_out) == pytest.approx(recorded, abs=0.05)

    gpu_run.main(["--export", *map(str, folders), "--to", str(root / "run")])
    for name, model in models.items():
        loaded = load_weights(root / "run" / f"{name}.safetensors", kind="base", family="fsrcnn")
        assert loaded.model.width == model.width
        facts = json.loads((root / "run" / f"{name}.provenance.json").read_text())
        assert facts["steps"] == report["networks"][name]["steps"] and "s, " in facts["trained_on"]
        for key, value in loaded.model.state_dict().items():
            assert torch.equal(value, model.state_dict()[key])
    with pytest.raises(SystemExit):
        gpu_run.main(["--collect", "4", "--out", str(root / "nothing"), "--keep", str(keep)])


def test_a_sigterm_leaves_a_complete_checkpoint(photos, tmp_path):
    out, keep = tmp_path / "out", tmp_path / "keep"
    command = [sys.executable, "-m", "benchmarks.gpu_run", "--dry-run", "--photos", str(photos)]
    command += ["--out", str(out), "--keep", str(keep), "--seconds", "60", "--families", "fsrcnn"]
    command += ["--no-checks", "--no-engine", "--checkpoint-seconds", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (out / gpu_run.REPORT).exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    finally:
        process.kill()
    assert process.returncode == 0, output
    report = json.loads((out / gpu_run.REPORT).read_text())
    assert report["stopped_early"] and report["elapsed"] < 50
    assert sorted(load_packed([out])) == ["fsrcnn-16", "fsrcnn-36", "fsrcnn-56"]


def test_engine_only_times_the_shipped_models_without_training(photos, tmp_path):
    pytest.importorskip("pyvips")  # the engine table runs `classsr upscale` on files
    out = tmp_path / "out"
    arguments = ["--dry-run", "--engine-only", "--no-checks", "--families", "fsrcnn", "--photos", str(photos)]
    report = gpu_run.main([*arguments, "--out", str(out), "--keep", str(tmp_path / "keep")])
    assert json.loads((out / gpu_run.REPORT).read_text()) == json.loads(json.dumps(report))
    assert "networks" not in report and report["engine_only"]["photo"] == "photo1.png"
    (row,) = report["engine"]
    assert row["family"] == "fsrcnn" and row["routing"] == "shipped Class-Module" and row["classsr_s"] > 0
    (frame,) = report["frame_8k"]  # at 64x36 in a dry run, 1920x1080 on a GPU
    assert frame["output"] == "256x144" and frame["classsr_s"] > 0 and frame["base_s"] > 0
    assert sum(frame["class_counts"]) > 0


# -- a whole call on one slimmable ledger (--resume) -------------------------------------------------


def ledger_call(photos: Path, ledger: Path, out: Path, root: Path, *extra: str) -> dict:
    """A dry ledger call on a tiny RCAN (widths 16/24/32), the synthetic photos as training and validation."""
    arguments = ["--dry-run", "--families", "rcan", "--widths", "16,24,32", "--resume", str(ledger)]
    arguments += ["--photos", str(photos), "--val", str(photos), "--carried", str(root / "carried")]
    arguments += ["--out", str(out), "--keep", str(root / "keep"), "--seconds", "3", *extra]
    return gpu_run.main(arguments)


def test_a_ledger_call_creates_then_resumes_a_sharded_ledger_through_its_returned_files(photos, tmp_path):
    from classsr_cli.train.slimmable import Ledger

    ledger = tmp_path / "ledger"
    first = ledger_call(photos, ledger, tmp_path / "out1", tmp_path)
    assert not ledger.exists()  # a dry run trains in a folder of its own
    plan = first["transfer"]
    assert 0 < plan["ledger_weights"] < plan["total"] <= gpu_run.CARRY_LIMIT
    run = first["ledger"]
    assert run["trained_in"].endswith("dry-ledger") and run["batch"] == 2 and "probe" in first
    assert run["started_at"] == 0 and run["iteration"] >= gpu_run.DRY.min_steps
    assert run["validation"]["iter"] == run["iteration"]  # every call ends with a validation
    assert sorted(run["validation"]) == ["16", "24", "32", "iter"]
    returned = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert returned == ["curve.jsonl", "gpu_run.json", "gpu_run.log", "weights-1.safetensors"]
    lines = [json.loads(line) for line in (tmp_path / "out1" / "curve.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines[:2]] == ["reference", "call"]
    assert "carn-o" in lines[0]["means"] and lines[1]["iter"] == 0 and lines[1]["batch"] == 2
    assert lines[1]["precision"] == "fp32" and {line["type"] for line in lines[2:]} == {"train", "val"}

    # a dry run's files go only into a ledger of their own, on request
    with pytest.raises(OutputError, match="dry run"):
        gpu_run.add_back(tmp_path / "out1", ledger)
    assert gpu_run.add_back(tmp_path / "out1", ledger, dry_run=True)["to"] == run["iteration"]
    shards = Ledger(ledger).shards()
    assert [p.name for p in shards] == ["weights-1.safetensors"]
    assert not (ledger / "weights.safetensors").exists()
    state, _ = Ledger(ledger).read()  # the fp16 shards load into the fp32 network
    assert all(v.dtype == torch.float32 for v in state.values())

    # the second call resumes a copy, bf16 autocast on the CPU on request; the ledger is left as it is
    before = {p.name: p.read_bytes() for p in ledger.iterdir()}
    second = ledger_call(photos, ledger, tmp_path / "out2", tmp_path, "--precision", "bf16")
    assert {p.name: p.read_bytes() for p in ledger.iterdir()} == before
    assert second["ledger"]["started_at"] == run["iteration"]
    assert second["ledger"]["iteration"] >= run["iteration"] + gpu_run.DRY.min_steps
    assert "probe" not in second and "transfer" in second

    # added in the order they ran, the returned folders make one curve
    with pytest.raises(OutputError, match="in the order they ran"):
        Ledger(tmp_path / "empty").add(tmp_path / "out2")  # it continued a later step
    assert gpu_run.add_back(tmp_path / "out2", ledger, dry_run=True)["added"]
    lines = [json.loads(line) for line in (ledger / "curve.jsonl").read_text().splitlines()]
    calls = [line for line in lines if line["type"] == "call"]
    assert [c["iter"] for c in calls] == [0, run["iteration"]] and calls[1]["precision"] == "bf16"
    assert sum(line["type"] == "reference" for line in lines) == 1
    assert Ledger(ledger).read()[1]["iteration"] == second["ledger"]["iteration"]
    assert not gpu_run.add_back(tmp_path / "out2", ledger, dry_run=True)["added"]  # already there
    with pytest.raises(OutputError, match="in the order they ran"):
        Ledger(ledger).add(tmp_path / "out1")


def test_a_real_ledger_is_refused_to_a_dry_runs_files_and_too_much_to_carry_stops_the_dry_run(
    photos, tmp_path, monkeypatch, capsys
):
    from classsr_cli.train.slimmable import Ledger, Slimmable

    ledger = tmp_path / "ledger"
    ledger_call(photos, ledger, tmp_path / "out1", tmp_path)
    gpu_run.add_back(tmp_path / "out1", ledger, dry_run=True)
    with pytest.raises(SystemExit):  # a real call does not continue a dry run's ledger
        gpu_run.main(["--families", "rcan", "--resume", str(ledger), "--out", str(tmp_path / "x")])
    assert "holds a dry run's ledger" in capsys.readouterr().err
    state, run_state = Ledger(ledger).read()
    model = Slimmable("rcan", [16, 24, 32])
    model.load_state_dict(state)
    Ledger(ledger, tags={"dry_run": False, "started_at": 0}).write(
        model, run_state
    )  # as a GPU call leaves it
    report = ledger_call(photos, ledger, tmp_path / "out2", tmp_path)
    assert report["ledger"]["started_at"] == run_state["iteration"]
    with pytest.raises(OutputError, match="dry run"):
        gpu_run.add_back(tmp_path / "out2", ledger)

    monkeypatch.setattr(gpu_run, "CARRY_LIMIT", 1 << 20)
    with pytest.raises(SystemExit):
        ledger_call(photos, tmp_path / "new", tmp_path / "out3", tmp_path)
    assert not (tmp_path / "new").exists()


def test_prepare_shrinks_the_photos_into_what_is_left_and_its_validation_crops_score_as_their_photos(
    photos, tmp_path
):
    pytest.importorskip("pyvips")
    import numpy as np

    from benchmarks import gpu_prepare
    from classsr_cli.imaging.photos import list_photos, read_rgb8
    from classsr_cli.train.slimmable import central_crops

    sources = list_photos(photos)
    whole = gpu_prepare.shrink_photos(sources, tmp_path / "all", 1 << 30)
    assert whole["reduced"] == 0 and whole["photos"] == 2  # PNGs fit: re-encoded as JPEG, not shrunk
    budget = whole["bytes"] // 2
    shrunk = gpu_prepare.shrink_photos(sources, tmp_path / "shrunk", budget)
    written = sorted(tmp_path.joinpath("shrunk").iterdir())
    assert [p.name for p in written] == ["photo0.jpg", "photo1.jpg"]
    assert shrunk["bytes"] == sum(p.stat().st_size for p in written) <= budget and shrunk["reduced"] >= 1
    for path in written:
        height, width = gpu_run.read_photo(path).shape[:2]
        assert height * width <= shrunk["cap"] + height + width + 1  # the cap, sides rounded up

    assert gpu_prepare.write_val_crops(photos, tmp_path / "val", lr_size=12) == 2
    crops = sorted(tmp_path.joinpath("val").iterdir())
    assert [gpu_run.read_photo(p).shape for p in crops] == [(48, 48, 3), (48, 48, 3)]
    there = central_crops(crops, 12, read=gpu_run.read_photo)  # on a GPU machine: OpenCV, no pyvips
    here = central_crops(sources, 12, read=read_rgb8)
    for a, b in zip(there.hr + there.lr, here.hr + here.lr, strict=True):
        np.testing.assert_array_equal(a, b)
