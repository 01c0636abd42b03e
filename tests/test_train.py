"""Training on a tiny prepared dataset, on the CPU: the three stages, resume, checkpoints, two-process DDP."""

import io
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from classsr_cli.cli import app
from classsr_cli.data.prepare import prepare_data
from classsr_cli.errors import WeightsError
from classsr_cli.models import create
from classsr_cli.train import TrainRequest, train_classifier
from classsr_cli.train.checkpoint import load_checkpoint
from classsr_cli.train.data import ShardedStream
from classsr_cli.train.loop import Settings, cosine_lr, training_autocast, training_step
from classsr_cli.train.losses import LossWeights
from classsr_cli.weights import load_weights, read_metadata, save_model

WIDTHS = "4,8,12"
# tiny runs: validation on one 24x24 LR crop, no loader processes, a checkpoint every iteration
QUICK = ["--val-crop", "24", "--workers", "0", "--checkpoint-minutes", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Five synthetic 160x192 photos (flat halves, stripes, noise) prepared into 3 classes, one held out."""
    import cv2

    root = tmp_path_factory.mktemp("train-data")
    src = root / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:160, 0:192]
    for i in range(5):
        wave = np.sin(x / (3 + i)) * 60 + np.cos(y / (5 + i)) * 60 + 128
        photo = np.stack([wave, wave * 0.8, 255 - wave], -1)
        photo[:80] = 100 + 10 * i
        photo += rng.normal(0, 10 * (i % 3), photo.shape)
        cv2.imwrite(str(src / f"photo{i}.png"), np.clip(photo, 0, 255).astype(np.uint8))
    out = root / "prepared"
    prepare_data(
        src,
        out,
        scales=(1.0,),
        classes=3,
        rank_model="bicubic",
        val_fraction=0.2,
        workers=1,
        show_progress=False,
    )
    return out


def quiet() -> Console:
    return Console(file=io.StringIO())


def run_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_three_stages_end_to_end_and_the_result_upscales(data, tmp_path):
    run = tmp_path / "run"
    common = ["--data", str(data), "--out", str(run), "--iters", "3", *QUICK]
    stage1 = run_cli("train", "branches", "-m", "fsrcnn", "--widths", WIDTHS, "--batch-size", "4", *common)
    assert stage1["stage"] == "branches" and stage1["weights"] == str(run / "stage1.safetensors")
    assert [b["stage"] for b in stage1["branches"]] == ["branch1", "branch2", "branch3"]
    for j, width in enumerate((4, 8, 12), start=1):
        branch = load_weights(run / f"branch{j}.safetensors")
        assert branch.kind == "base" and branch.model.width == width

    stage2 = run_cli("train", "classifier", "--batch-size", "8", *common)
    assert stage2["stage"] == "classifier" and stage2["iters"] == 3 and stage2["start_iter"] == 0
    assert len(stage2["class_fractions"]) == 3 and stage2["val_psnr"] > 0
    # stage 2 trains the Class-Module only: the branches are bit for bit those of stage 1
    before, after = (
        load_weights(run / "stage1.safetensors").model,
        load_weights(run / "stage2.safetensors").model,
    )
    for old, new in zip(before.branches, after.branches, strict=True):
        assert all(
            torch.equal(a, b)
            for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True)
        )
    assert not torch.equal(before.classifier.lastOut.weight, after.classifier.lastOut.weight)

    stage3 = run_cli("train", "joint", "--batch-size", "8", *common)
    assert stage3["weights"] == str(run / "final.safetensors")
    final = load_weights(stage3["weights"])
    assert final.kind == "classsr" and final.family == "fsrcnn" and final.model.widths == [4, 8, 12]
    assert final.model.branches[2].width == 12

    from classsr_cli.engine import upscale_array

    sr, summary = upscale_array(final.model, np.random.default_rng(1).random((40, 36, 3), dtype=np.float32))
    assert sr.shape == (160, 144, 3) and sum(summary["class_counts"]) == summary["tiles"]

    log = [json.loads(line) for line in (run / "joint.jsonl").read_text().splitlines()]
    assert {"train", "val"} <= {entry["type"] for entry in log}
    assert {"l1", "class", "average", "loss", "class_fractions", "seconds"} <= set(log[0])
    assert all(entry["seconds"] >= 0 for entry in log)

    # a finished stage is never overwritten by accident
    again = CliRunner().invoke(app, ["train", "joint", *common])
    assert again.exit_code == 2 and "--resume" in again.output


def test_base_network_on_all_data(data, tmp_path):
    result = run_cli(
        "train",
        "branches",
        "-m",
        "carn",
        "--all-data",
        "--widths",
        "8",
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--data",
        str(data),
        "--out",
        str(tmp_path),
        *QUICK,
    )
    assert result["stage"] == "base"
    assert load_weights(result["weights"]).model.width == 8


def test_a_branch_can_start_from_a_trained_base_network(data, tmp_path):
    """--init: the hard branch fine-tuned from the -O network of its width; other widths are refused."""
    from classsr_cli.models import create_base

    torch.manual_seed(1)
    base = save_model(create_base("fsrcnn", 12), tmp_path / "base.safetensors", "fsrcnn")
    common = ["--data", str(data), "-m", "fsrcnn", "--widths", WIDTHS, "--iters", "1", *QUICK]
    result = run_cli(
        "train", "branches", *common, "--branch", "3", "--init", str(base), "--lr", "1e-9",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    start = load_weights(base).model.state_dict()
    tuned = load_weights(result["weights"]).model.state_dict()
    assert all(torch.allclose(start[key], tuned[key], atol=1e-6) for key in start)

    narrower = ["--branch", "1", "--init", str(base), "--out", str(tmp_path / "b")]
    refused = CliRunner().invoke(app, ["train", "branches", *common, *narrower])
    assert refused.exit_code == 2 and "width 12" in refused.output


def test_a_branch_can_start_from_its_branch_of_a_classsr_model(data, tmp_path):
    """--init CLASSSR --branch K: fine-tune branch K of a trained model (the smooth-field fine-tune)."""
    torch.manual_seed(2)
    trained = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "classsr.safetensors", "fsrcnn")
    common = ["--data", str(data), "-m", "fsrcnn", "--widths", WIDTHS, "--iters", "1", *QUICK]
    result = run_cli(
        "train", "branches", *common, "--branch", "1", "--init", str(trained), "--lr", "1e-9",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    start = load_weights(trained).model.branches[0].state_dict()
    tuned = load_weights(result["weights"]).model.state_dict()
    assert all(torch.allclose(start[key], tuned[key], atol=1e-6) for key in start)
    other = ["--widths", "5,8,12", "--branch", "1", "--init", str(trained), "--out", str(tmp_path / "b")]
    refused = CliRunner().invoke(app, ["train", "branches", *common[:4], *other, "--iters", "1", *QUICK])
    assert refused.exit_code == 2 and "branches [4, 8, 12]" in refused.output


def test_stage_one_assembled_from_networks_trained_on_all_data(data, tmp_path):
    from classsr_cli.models import create_base

    networks = []
    for width in (4, 8, 12):
        torch.manual_seed(width)
        networks.append(
            str(save_model(create_base("fsrcnn", width), tmp_path / f"o{width}.safetensors", "fsrcnn"))
        )
    run = tmp_path / "run"
    assembled = CliRunner().invoke(app, ["train", "assemble", *networks, "-m", "fsrcnn", "--out", str(run)])
    assert assembled.exit_code == 0, assembled.output
    model = load_weights(run / "stage1.safetensors").model
    assert model.widths == [4, 8, 12]
    first = load_weights(networks[0]).model.state_dict()
    assert all(torch.equal(value, model.branches[0].state_dict()[key]) for key, value in first.items())
    summary = run_cli("train", "classifier", "--data", str(data), "--out", str(run), "--iters", "1", *QUICK)
    assert summary["stage"] == "classifier"

    again = CliRunner().invoke(app, ["train", "assemble", *networks, "-m", "fsrcnn", "--out", str(run)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = CliRunner().invoke(
        app,
        [
            "train",
            "assemble",
            networks[0],
            str(tmp_path / "none.safetensors"),
            "-m",
            "fsrcnn",
            "--out",
            str(tmp_path),
        ],
    )
    assert missing.exit_code == 2 and "not found" in missing.output


def test_fine_tuned_branches_reassembled_behind_the_trained_class_module(tmp_path):
    from classsr_cli.models import create_base

    torch.manual_seed(5)
    trained = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "trained.safetensors", "fsrcnn")
    networks = [
        str(save_model(create_base("fsrcnn", w), tmp_path / f"o{w}.safetensors", "fsrcnn"))
        for w in (4, 8, 12)
    ]
    arguments = ["train", "assemble", *networks, "-m", "fsrcnn", "--classifier", str(trained)]
    done = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    model = load_weights(tmp_path / "run" / "stage1.safetensors").model
    kept = load_weights(trained).model.classifier.state_dict()
    assert all(torch.equal(value, model.classifier.state_dict()[key]) for key, value in kept.items())
    two = CliRunner().invoke(app, ["train", "assemble", *networks[1:], "-m", "fsrcnn", "--classifier",
                                   str(trained), "--out", str(tmp_path / "two")])  # fmt: skip
    assert two.exit_code == 2 and "3 classes" in two.output


def settings_for(iters: int) -> dict:
    return {
        "iters": iters,
        "batch_size": 8,
        "val_crop": 16,
        "workers": 0,
        "checkpoint_minutes": 0.0,
        "log_every": 1,
    }


def test_resume_continues_exactly_where_it_stopped(data, tmp_path):
    """Stop after 3 of 6 iterations, resume: the same weights, schedule and logs as an uninterrupted run."""
    torch.manual_seed(0)
    init = save_model(create("carn", [4, 8, 12]), tmp_path / "stage1.safetensors", "carn")

    straight = TrainRequest(data, tmp_path / "straight", init=init, options=settings_for(6))
    train_classifier(straight, console=quiet())

    def stop_at_three(iteration, model):
        if iteration == 3:
            raise KeyboardInterrupt

    stopped = TrainRequest(data, tmp_path / "stopped", init=init, options=settings_for(6))
    with pytest.raises(KeyboardInterrupt):
        train_classifier(stopped, console=quiet(), on_iteration=stop_at_three)
    checkpoint_file = tmp_path / "stopped" / "classifier.ckpt"
    raw = torch.load(checkpoint_file, map_location="cpu", weights_only=True)  # no pickled objects inside
    assert raw["iteration"] == 3 and raw["iters"] == 6 and raw["data_position"] == 3 * 8
    assert {"model", "optimizer", "schedule", "rng", "options"} <= set(raw)

    # iterations, batch size and the rest come from the checkpoint
    resumed = TrainRequest(data, tmp_path / "stopped", resume=True, options={"workers": 0})
    summary = train_classifier(resumed, console=quiet())
    assert summary["start_iter"] == 3 and summary["iters"] == 6
    assert load_checkpoint(checkpoint_file)["iteration"] == 6
    # fewer iterations than the checkpoint holds: refused, the weights left as they are
    weights_bytes = (tmp_path / "stopped" / "stage2.safetensors").read_bytes()
    shorter = TrainRequest(data, tmp_path / "stopped", resume=True, options={"workers": 0, "iters": 2})
    with pytest.raises(WeightsError, match="iteration 6, past --iters 2"):
        train_classifier(shorter, console=quiet())
    assert (tmp_path / "stopped" / "stage2.safetensors").read_bytes() == weights_bytes

    a = load_weights(tmp_path / "straight" / "stage2.safetensors").model.state_dict()
    b = load_weights(tmp_path / "stopped" / "stage2.safetensors").model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    # CARN's frozen branches kept their BatchNorm statistics (eval mode), not just their weights
    start = load_weights(init).model.state_dict()
    assert all(torch.equal(start[key], b[key]) for key in b if not key.startswith("classifier."))
    assert any("running_mean" in key for key in b)
    train_lines = [
        json.loads(line) for line in (tmp_path / "stopped" / "classifier.jsonl").read_text().splitlines()
    ]
    assert [entry["iter"] for entry in train_lines if entry["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    # training seconds carry over a resume instead of starting again from zero
    seconds = [entry["seconds"] for entry in train_lines if entry["type"] == "train"]
    assert seconds == sorted(seconds)


def test_schedule_and_data_order_are_functions_of_the_position():
    settings = Settings(iters=10, batch_size=4, lr=1e-3, min_lr=1e-7)
    assert cosine_lr(0, settings) == pytest.approx(1e-3)
    assert cosine_lr(5, settings) == pytest.approx((1e-3 + 1e-7) / 2)
    assert cosine_lr(10, settings) == pytest.approx(1e-7)
    stream = iter(ShardedStream(7, seed=3))
    first = [next(stream) for _ in range(17)]
    later = iter(ShardedStream(7, seed=3, start=9))
    assert [next(later) for _ in range(8)] == first[9:]
    assert sorted(index for index, _ in first[:7]) == list(range(7))  # one epoch visits each sample once
    # two processes share an epoch without overlap
    shards = [iter(ShardedStream(8, seed=3, rank=r, world_size=2)) for r in range(2)]
    seen = [index for shard in shards for index, _ in (next(shard) for _ in range(4))]
    assert sorted(seen) == list(range(8))


@pytest.mark.parametrize("classes", [None, [1]])
def test_batches_gathered_on_the_device_are_the_loaders_to_the_bit(data, classes):
    """The GPU's data source (`DeviceSubImages`), run on the CPU here: the same batches from one stream."""
    from classsr_cli.train.data import make_loader, open_train_set

    dataset = open_train_set(data, classes, seed=0)
    cpu = torch.device("cpu")
    loader = iter(make_loader(dataset, 8, 5, 0, 1, 3, 0, cpu, on_device=False))
    gathered = iter(make_loader(dataset, 8, 5, 0, 1, 3, 0, cpu, on_device=True))
    for _ in range(4):
        for expected, got in zip(next(loader), next(gathered), strict=True):
            assert got.shape == expected.shape and torch.equal(got, expected)


def test_a_zero_image_loss_weight_leaves_the_branches_unrun():
    torch.manual_seed(0)
    model = create("fsrcnn", [4, 8, 12])
    calls = []
    for branch in model.branches:
        branch.register_forward_hook(lambda *_: calls.append(1))
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-2)
    before = [p.clone() for p in model.classifier.parameters()]
    low_res, high_res = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 128, 128)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    weights = LossWeights(image=0.0, classes=0.0, average=0.0, labels=1.0)
    _, terms, probs = training_step(model, optimizer, low_res, high_res, True, weights, labels=labels)
    assert not calls and "l1" not in terms and probs.shape == (6, 3)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.classifier.parameters(), strict=True))
    training_step(model, optimizer, low_res, high_res, True, LossWeights(labels=1.0), labels=labels)
    assert len(calls) == 3  # with an Image-Loss every branch runs, as the paper's mixture needs


def test_bf16_training_on_the_cpu_on_request(data, tmp_path):
    with training_autocast("auto", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with training_autocast("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    args = ["train", "branches", "-m", "fsrcnn", "--all-data", "--widths", "8", "--iters", "2"]
    args += ["--batch-size", "2", "--data", str(data), "--out", str(tmp_path), *QUICK]
    result = run_cli(*args, "--precision", "bf16")
    assert load_checkpoint(tmp_path / "base.ckpt")["options"]["precision"] == "bf16"
    assert load_weights(result["weights"]).model.width == 8
    bad = CliRunner().invoke(app, [*args, "--precision", "fp8", "--out", str(tmp_path / "other")])
    assert bad.exit_code == 2 and "--precision" in bad.output
    assert not (tmp_path / "other").exists()


def test_resume_and_missing_inputs_are_user_errors(data, tmp_path):
    result = CliRunner().invoke(app, ["train", "classifier", "--data", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "stage1.safetensors" in result.output
    result = CliRunner().invoke(app, ["train", "branches", "--data", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--model" in result.output
    result = CliRunner().invoke(
        app,
        ["train", "branches", "-m", "fsrcnn", "--branch", "4", "--data", str(data), "--out", str(tmp_path)],
    )
    assert result.exit_code == 2 and "--branch" in result.output


# -- two processes ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Logits(torch.nn.Module):
    """Class probabilities of 8 sub-images as parameters: the first half leans to class 0, the rest to 1."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([[2.0, 0.0]] * 4 + [[0.0, 2.5]] * 4))

    def forward(self, rows):
        return torch.softmax(self.logits[rows], dim=1)


def _split_batch_gradients_match(rank: int) -> bool:
    """Under DDP, the Average-Loss of half a batch per process has the gradient of the whole batch.

    Each half alone is unbalanced the other way round from the whole, so a per-process Average-Loss would
    push the wrong way: this fails unless the class sums are added up over the processes.
    """
    from torch.nn.parallel import DistributedDataParallel

    from classsr_cli.train.losses import average_loss

    single = _Logits()
    average_loss(single(torch.arange(8))).backward()
    model = _Logits()
    ddp = DistributedDataParallel(model)  # kept alive: its reducer averages the gradients during backward
    half = torch.arange(4 * rank, 4 * rank + 4)
    average_loss(ddp(half), world_size=2).backward()
    return torch.allclose(model.logits.grad, single.logits.grad, atol=1e-7)


def _ddp_worker(rank: int, world: int, port: int, data: str, run: str, init: str):
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )

    def record(iteration, model):
        if iteration == 3:
            torch.save(model.state_dict(), Path(run) / f"rank{rank}.pt")
            torch.save({"split_batch_ok": _split_batch_gradients_match(rank)}, Path(run) / f"check{rank}.pt")

    request = TrainRequest(Path(data), Path(run), init=Path(init), device="cpu", options=settings_for(3))
    train_classifier(request, console=quiet(), on_iteration=record)


def test_two_process_ddp_keeps_ranks_identical(data, tmp_path):
    torch.manual_seed(0)
    init = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "stage1.safetensors", "fsrcnn")
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), str(data), str(tmp_path), str(init)), nprocs=2
    )
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert torch.load(tmp_path / "check0.pt", weights_only=True)["split_batch_ok"]
    # rank 0 alone wrote the outputs; they hold the weights both ranks ended with
    final = load_weights(tmp_path / "stage2.safetensors").model.state_dict()
    assert all(torch.equal(final[key], states[0][key]) for key in final)
    assert load_checkpoint(tmp_path / "classifier.ckpt")["iteration"] == 3


def test_calibration_spends_at_most_the_flops_ratio_asked_and_the_engine_routes_the_same(data, tmp_path):
    from classsr_cli.engine import Upscaler
    from classsr_cli.engine.routing import plan_for
    from classsr_cli.train.calibration import calibrate_routing, held_out_tiles
    from classsr_cli.train.validation import load_val_photos

    torch.manual_seed(0)
    source = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "stage2.safetensors", "fsrcnn")
    photos = load_val_photos(data, None)
    tiles = torch.cat([held_out_tiles([photo.lr]) for photo in photos] * 8)  # more tiles: finer steps
    plan = plan_for(load_weights(source).model)
    cost = [(flops + plan.classifier_flops) / plan.base_flops for flops in plan.branch_flops]
    spent = []
    for ratio in (cost[0], (cost[0] + cost[2]) / 2, cost[2]):
        result = calibrate_routing(load_weights(source).model, tiles, ratio)
        assert result.flops_ratio_after <= ratio + 1e-9
        spent.append(result.flops_ratio_after)
    assert spent[0] == pytest.approx(cost[0]) and spent[2] == pytest.approx(cost[2])  # all simple, all hard
    assert spent[0] < spent[1] < spent[2]

    out = tmp_path / "calibrated.safetensors"
    middle = f"{(cost[0] + cost[2]) / 2:.4f}"
    summary = run_cli(
        "train", "calibrate", str(source), "--data", str(data), "--out", str(out), "--flops-ratio", middle
    )
    before, calibrated = load_weights(source).model, load_weights(out).model
    shift = calibrated.classifier.lastOut.bias - before.classifier.lastOut.bias
    assert torch.allclose(shift, summary["shift"] * torch.arange(3.0), atol=1e-3)
    # the held-out photos through the engine route exactly as the calibration counted
    engine = Upscaler(calibrated, device="cpu")
    tally = engine.new_tally()
    for photo in photos:
        engine.upscale_array(photo.lr, tally=tally)
    assert tally.tiles == summary["tiles"]
    assert tally.flops_ratio(engine.plan) == pytest.approx(summary["flops_ratio_after"], abs=1e-3)
    # --shift: a shift chosen elsewhere (on a curve of PSNR against FLOPs), applied as is
    fixed = tmp_path / "shifted.safetensors"
    args = ["--data", str(data), "--out", str(fixed), "--shift", "0.75"]
    given = run_cli("train", "calibrate", str(source), *args)
    moved = load_weights(fixed).model.classifier.lastOut.bias - before.classifier.lastOut.bias
    assert given["shift"] == 0.75 and torch.allclose(moved, 0.75 * torch.arange(3.0), atol=1e-6)
    assert read_metadata(fixed)["routing_shift"] == "0.7500"


def test_calibration_refuses_what_it_cannot_do(data, tmp_path):
    from classsr_cli.models import create_base

    torch.manual_seed(0)
    source = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "stage2.safetensors", "fsrcnn")
    single = save_model(create_base("fsrcnn", 8), tmp_path / "o8.safetensors", "fsrcnn")
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep")
    cases = [
        ([str(source), "--flops-ratio", "0.01"], "between"),  # below every tile on branch 1
        ([str(single)], "not classsr"),
        ([str(source), "--out", str(taken)], "--overwrite"),
    ]
    for arguments, message in cases:
        out = [] if "--out" in arguments else ["--out", str(tmp_path / "x.safetensors")]
        result = CliRunner().invoke(app, ["train", "calibrate", *arguments, "--data", str(data), *out])
        assert result.exit_code == 2 and message in result.output, result.output
    assert taken.read_bytes() == b"keep" and not (tmp_path / "x.safetensors").exists()


def test_a_clean_fraction_is_refused_for_upscaling_data(data, tmp_path):
    arguments = ["train", "branches", "--data", str(data), "-m", "fsrcnn", "--all-data", "--widths", "4"]
    arguments += ["--iters", "1", "--clean-fraction", "0.1", "--out", str(tmp_path / "run"), *QUICK]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and "--clean-fraction is for denoising data" in result.output


def test_smooth_pairs_are_smooth_and_shrink_as_the_training_data_does():
    from classsr_cli.imaging.bicubic import imresize
    from classsr_cli.train.smooth import smooth_pairs

    first = smooth_pairs(6, 16, 4, torch.Generator().manual_seed(3))
    again = smooth_pairs(6, 16, 4, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # seeded: resumes repeat
    low_res, high_res = first
    assert low_res.shape == (6, 3, 16, 16) and high_res.shape == (6, 3, 64, 64)
    assert 0 <= float(high_res.min()) and float(high_res.max()) <= 1
    # the LR is the HR shrunk by MATLAB's bicubic, up to its very edges (the field reaches beyond the crop)
    hr = high_res[0].permute(1, 2, 0).double().numpy()
    inside = imresize(hr, 0.25)[2:-2, 2:-2]
    assert np.abs(low_res[0].permute(1, 2, 0).numpy()[2:-2, 2:-2] - inside).max() < 1e-5
    # smooth: no step between neighbouring HR pixels is more than a few grey levels
    assert float(high_res.diff(dim=3).abs().max()) < 8 / 255
    same, _ = smooth_pairs(2, 8, 1, torch.Generator().manual_seed(0))
    assert same.shape == (2, 3, 8, 8)


def test_a_smooth_fraction_replaces_that_share_of_each_batch(data, tmp_path, monkeypatch):
    import classsr_cli.train.loop as loop

    drawn, original = [], loop.smooth_pairs

    def counting(count, *args):
        drawn.append(count)
        return original(count, *args)

    monkeypatch.setattr(loop, "smooth_pairs", counting)
    out = tmp_path / "run"
    options = {"iters": 3, "batch_size": 4, "val_every": 0, "val_crop": 24, "workers": 0}
    options["smooth_fraction"] = 1.0
    train_branches_api(TrainRequest(data, out, model="fsrcnn", widths=[4], options=options))
    assert drawn == [4, 4, 4]  # the whole batch, every iteration
    assert load_checkpoint(out / "base.ckpt")["options"]["smooth_fraction"] == 1.0
    drawn.clear()
    options["smooth_fraction"] = 0.0
    train_branches_api(TrainRequest(data, tmp_path / "plain", model="fsrcnn", widths=[4], options=options))
    assert drawn == []


def train_branches_api(request):
    from classsr_cli.train import train_branches

    return train_branches(request, all_data=True, console=quiet())


def test_training_keeps_the_users_thread_count(monkeypatch):
    """OMP_NUM_THREADS set by the user stands (two trainings on one machine); unset, a process takes the cores
    its machine's processes share."""
    from classsr_cli.train import distributed

    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        distributed.setup("cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        distributed.setup("cpu")
        assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(threads)


def test_a_slimmable_ledger_on_the_cpu_is_one_fp32_file_and_resumes_from_it(data, tmp_path):
    from safetensors import safe_open

    from classsr_cli.train.slimmable import Ledger, slimmable_run

    ledger = tmp_path / "ledger"
    options = {"model": "srresnet", "widths": [16, 24, 32], "iters": 6, "reference": None, "device": "cpu"}
    first = slimmable_run(ledger, data, data.parent / "photos", stop_at=3, echo=lambda _: None, **options)
    assert first["iteration"] == first["started_at"] + 3 == 3
    assert sorted(p.name for p in ledger.iterdir()) == ["curve.jsonl", "weights.safetensors"]
    with safe_open(str(ledger / "weights.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
        assert all(handle.get_tensor(key).dtype == torch.float32 for key in handle.keys())
    assert set(meta) == {
        "format",
        "family",
        "kind",
        "widths",
        "scale",
        "dtype",
        "stage",
        "iterations",
        "ledger",
    }
    assert set(json.loads(meta["ledger"])) == {"iteration", "seconds", "recipe", "validation"}
    assert meta["iterations"] == "3" and json.loads(meta["widths"]) == [32]

    second = slimmable_run(ledger, data, data.parent / "photos", echo=lambda _: None, **options)
    assert second["started_at"] == 3 and second["iteration"] == 6
    assert second["validation"]["iter"] == 6 and set(second["validation"]) == {"iter", "16", "24", "32"}
    lines = Ledger(ledger).records()
    assert [line["type"] for line in lines] == ["reference", "val"]  # no call lines on the CPU
    assert load_weights(ledger / "weights.safetensors", kind="base").model.width == 32

    # stage 1 from the ledger: its network cut at the widths it trained, its step kept
    routing = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "fsrcnn.safetensors", "fsrcnn")
    assembled = run_cli(
        "train", "assemble", str(ledger), "-m", "srresnet", "--out", str(tmp_path / "run"),
        "--classifier", str(routing),
    )  # fmt: skip
    assert assembled["weights"] == str(tmp_path / "run" / "stage1.safetensors")
    assert assembled["ledger_step"] == 6 and assembled["class_module"] == str(routing)
    fresh = run_cli("train", "assemble", str(ledger), "--out", str(tmp_path / "fresh"))  # the ledger's family
    assert fresh["class_module"] == "fresh" and load_weights(fresh["weights"]).family == "srresnet"
    with safe_open(str(tmp_path / "run" / "stage1.safetensors"), framework="pt") as handle:
        assert handle.metadata()["iterations"] == "6"
    model = load_weights(tmp_path / "run" / "stage1.safetensors").model
    assert model.widths == [16, 24, 32]
    kept = load_weights(routing).model.classifier.state_dict()  # another family's Class-Module, as it was
    assert all(torch.equal(value, model.classifier.state_dict()[key]) for key, value in kept.items())
    widest = load_weights(ledger / "weights.safetensors", kind="base").model.state_dict()
    for branch in model.branches:  # each branch is the widest network's leading channels
        for key, value in branch.state_dict().items():
            assert torch.equal(value, widest[key][tuple(slice(0, n) for n in value.shape)]), key
    other = CliRunner().invoke(
        app, ["train", "assemble", str(ledger), "-m", "rcan", "--out", str(tmp_path / "rcan")]
    )
    assert other.exit_code == 2 and "ledger of srresnet, not rcan" in other.output
    empty = CliRunner().invoke(
        app, ["train", "assemble", str(tmp_path), "-m", "srresnet", "--out", str(tmp_path / "none")]
    )
    assert empty.exit_code == 2 and "holds no ledger weights" in empty.output


def test_engine_relabelling_measures_each_sub_images_cell_on_whole_image_branch_outputs(data, tmp_path):
    """`train relabel --engine`: each branch through the engine over every prepared LR image (as `upscale
    --branch K`), the error summed over each sub-image's central 28x28 LR cell."""
    from classsr_cli.data.dataset import load_index, prepared_info
    from classsr_cli.engine import Upscaler
    from classsr_cli.pixels import unit_to_uint8

    torch.manual_seed(0)
    weights = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "stage1.safetensors", "fsrcnn")
    out = tmp_path / "relabelled"
    summary = run_cli(
        "train", "relabel", str(weights), "--data", str(data), "--out", str(out), "--engine",
        "--flops-ratio", "0.7",
    )  # fmt: skip
    assert summary["errors"] == "engine" and summary["flops_ratio"] <= 0.7
    errors, index = np.load(out / "branch_errors.npy"), load_index(out)
    assert (errors >= 0).all() and errors.shape == (len(index), 3)
    # one sub-image by hand: branch 2 over the whole image, its cell's squared error
    info = prepared_info(data)
    row = len(index) // 2
    entry = next(i for i in info["images"] if i["id"] == index["image"][row])["scales"][index["scale"][row]]
    lr, hr = np.load(data / entry["lr"]), np.load(data / entry["hr"]).astype(np.int64)
    model = load_weights(weights).model
    sr = unit_to_uint8(Upscaler(model, "cpu", branch=2).upscale_array(lr.astype(np.float32) / 255)[0])
    y, x = int(index["y"][row]) * 4, int(index["x"][row]) * 4
    cell = (slice(y + 8, y + 120), slice(x + 8, x + 120))
    assert errors[row, 1] == ((sr[cell].astype(np.int64) - hr[cell]) ** 2).sum()
    # --scales keeps the sub-images of those prepared scales only, and refuses others
    result = CliRunner().invoke(
        app,
        [
            "train",
            "relabel",
            str(weights),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "x"),
            "--scales",
            "0.5",
        ],
    )
    assert result.exit_code == 2 and "prepared at 1.0" in result.output
    # --errors-from: labels at another ratio from the same errors, without running the branches again
    again = run_cli(
        "train", "relabel", str(weights), "--data", str(data), "--out", str(tmp_path / "again"),
        "--errors-from", str(out), "--flops-ratio", "0.4",
    )  # fmt: skip
    assert again["errors"] == "engine" and again["flops_ratio"] <= 0.4 < summary["flops_ratio"]
    assert np.array_equal(np.load(tmp_path / "again" / "branch_errors.npy"), errors)
    other = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "other.safetensors", "fsrcnn")
    args = ["--data", str(data), "--out", str(tmp_path / "y"), "--errors-from", str(out)]
    result = CliRunner().invoke(app, ["train", "relabel", str(other), *args])
    assert result.exit_code == 2 and "other weights" in result.output
    # --engine asks for errors through the engine: an earlier folder of sub-images run alone is refused
    alone = tmp_path / "alone"
    run_cli("train", "relabel", str(weights), "--data", str(data), "--out", str(alone))
    args = ["--data", str(data), "--out", str(tmp_path / "z"), "--errors-from", str(alone), "--engine"]
    result = CliRunner().invoke(app, ["train", "relabel", str(weights), *args])
    assert result.exit_code == 2 and "not through the engine" in " ".join(result.output.split())
    assert not (tmp_path / "z").exists()


def test_snapshots_of_a_ledger_average_into_a_ledger_that_assembles(tmp_path):
    """`train average`: the mean of the snapshots, the last one's ledger state (with the steps averaged)."""
    from classsr_cli.models import create_base

    recipe = {"family": "srresnet", "widths": [8, 12, 16]}
    snapshots = []
    for step in (100, 250, 400):
        torch.manual_seed(step)
        ledger = json.dumps({"iteration": step, "seconds": step / 10, "recipe": recipe})
        path = tmp_path / f"at-{step}.safetensors"
        save_model(
            create_base("srresnet", 16),
            path,
            "srresnet",
            stage="slimmable",
            iterations=str(step),
            ledger=ledger,
        )
        snapshots.append(path)
    out = tmp_path / "average" / "weights.safetensors"
    summary = run_cli("train", "average", *map(str, snapshots), "--out", str(out))
    assert summary["steps"] == [100, 250, 400] and summary["weights"] == str(out)
    states = [load_weights(path).model.state_dict() for path in snapshots]
    for key, value in load_weights(out).model.state_dict().items():
        assert torch.allclose(value, sum(state[key] for state in states) / 3, atol=1e-7), key
    meta = read_metadata(out)
    assert meta["iterations"] == "400" and json.loads(meta["ledger"])["averaged_steps"] == [100, 250, 400]
    assembled = run_cli("train", "assemble", str(out.parent), "--out", str(tmp_path / "run"))
    assert assembled["ledger_step"] == 400
    assert load_weights(tmp_path / "run" / "stage1.safetensors").model.widths == [8, 12, 16]

    other = save_model(create_base("srresnet", 12), tmp_path / "narrow.safetensors", "srresnet")
    fresh = tmp_path / "fresh.safetensors"
    for arguments, target, message in (
        ([snapshots[0], other], fresh, "not one network"),
        ([snapshots[0]], fresh, "two or more snapshots"),
        ([snapshots[0], snapshots[1]], out, "exists"),
    ):
        result = CliRunner().invoke(app, ["train", "average", *map(str, arguments), "--out", str(target)])
        assert result.exit_code == 2 and message in result.output and len(result.output.splitlines()) <= 2


def test_zero_mean_filters_make_the_class_module_blind_to_brightness_and_train_so(data, tmp_path):
    """`--zero-mean-filters`: the Class-Module's first-layer kernels stay zero-mean per colour channel
    through training (projected after every update), so a brightness change or colour cast leaves its
    logits unchanged; a Class-Module from scratch behind a trained model's branches (`train assemble
    MODEL`); stage 1 refuses the option."""
    from classsr_cli.models.classifier import ClassModule

    torch.manual_seed(0)
    module = ClassModule(3)
    with torch.no_grad():  # weights as a trained module's, not the small ones it starts from
        for layer in module.CondNet[::2]:
            layer.weight.mul_(10)
            layer.bias.normal_(0, 0.1)
    x = torch.rand(4, 3, 32, 32) * 0.5
    cast = x + torch.tensor([0.2, -0.1, 0.3]).view(1, 3, 1, 1)
    assert (module(x) - module(cast)).abs().max() > 1e-2  # the paper's kernels see the cast
    module.center_input_filters_()
    assert (module(x) - module(cast)).abs().max() < 1e-5

    torch.manual_seed(0)
    trained = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "trained.safetensors", "fsrcnn")
    run = tmp_path / "run"
    assembled = run_cli("train", "assemble", str(trained), "-m", "fsrcnn", "--out", str(run))
    stage1 = load_weights(assembled["weights"]).model
    source = load_weights(trained).model
    for mine, theirs in zip(stage1.branches, source.branches, strict=True):
        pairs = zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
    assert read_metadata(run / "stage1.safetensors")["branches_from"] == str(trained)
    args = ["--data", str(data), "--out", str(run), "--iters", "3", "--batch-size", "4", *QUICK]
    run_cli("train", "classifier", *args, "--w-label", "1", "--zero-mean-filters", "--lr", "1e-2")
    first = load_weights(run / "stage2.safetensors").model.classifier.CondNet[0].weight
    fresh = stage1.classifier.CondNet[0].weight
    assert not torch.allclose(first, fresh - fresh.mean(dim=(2, 3), keepdim=True), atol=1e-6)  # it trained
    assert first.mean(dim=(2, 3)).abs().max() < 1e-6
    refused = CliRunner().invoke(
        app,
        ["train", "branches", "-m", "fsrcnn", "--widths", "4", "--all-data", *args, "--zero-mean-filters"],
    )
    assert refused.exit_code == 2 and "no such option" in refused.output.lower()


def test_calibration_to_a_psnr_tolerance_takes_the_cheapest_shift_that_holds_it(data, tmp_path):
    """`train calibrate --tolerance`: on a relabelled folder, the cheapest shift on its grid whose routing
    keeps the mean PSNR over the photos (from the sub-images' branch errors) within the tolerance."""
    from classsr_cli.data.dataset import load_index
    from classsr_cli.engine.routing import plan_for
    from classsr_cli.train.calibration import tolerance_shift

    torch.manual_seed(0)
    source = save_model(create("fsrcnn", [4, 8, 12]), tmp_path / "stage1.safetensors", "fsrcnn")
    relabelled = tmp_path / "relabelled"
    run_cli("train", "relabel", str(source), "--data", str(data), "--out", str(relabelled), "--engine")
    model = load_weights(source).model
    errors, index = np.load(relabelled / "branch_errors.npy"), load_index(relabelled)
    photo = np.unique(np.stack([index["image"], index["scale"]], 1), axis=0, return_inverse=True)[1].ravel()
    plan = plan_for(model)
    cost = (np.array(plan.branch_flops) + plan.classifier_flops) / plan.base_flops
    from classsr_cli.data.dataset import SPLITS, SubImageDataset

    logits = np.zeros((len(index), 3), np.float32)
    with torch.no_grad():
        for split, code in SPLITS.items():
            rows = np.flatnonzero(index["split"] == code)
            images = SubImageDataset(relabelled, split, augment=False)
            lr = torch.stack([images[i][0] for i in range(len(rows))])
            logits[rows] = model.classifier(lr).numpy()

    def drop_and_flops(shift):
        classes = np.argmax(logits + shift * np.arange(3), axis=1)

        def psnr(chosen):
            return np.mean([10 * np.log10(1 / chosen[photo == p].mean()) for p in np.unique(photo)])

        return psnr(errors[:, 2]) - psnr(errors[np.arange(len(errors)), classes]), cost[classes].mean()

    for tolerance in (0.0, 0.3, 5.0):
        found = tolerance_shift(model, relabelled, tolerance)
        drop, flops = drop_and_flops(found["shift"])
        assert drop <= tolerance + 1e-9 and flops == pytest.approx(found["flops_ratio"])
        assert found["psnr_drop"] == pytest.approx(drop, abs=1e-9) and found["photos"] == len(set(photo))
        for other in np.arange(-200, 201) * 0.05:  # no shift on the grid is cheaper and holds it
            d, f = drop_and_flops(other)
            assert d > tolerance + 1e-9 or f >= found["flops_ratio"] - 1e-9
    out = tmp_path / "calibrated.safetensors"
    summary = run_cli(
        "train", "calibrate", str(source), "--data", str(relabelled), "--out", str(out), "--tolerance", "0.3"
    )
    assert summary["shift"] == pytest.approx(tolerance_shift(model, relabelled, 0.3)["shift"], abs=1e-4)
    assert summary["subimage_psnr_drop"] <= 0.3 and read_metadata(out)["routing_shift"]
    both = CliRunner().invoke(
        app,
        ["train", "calibrate", str(source), "--data", str(relabelled), "--out", str(tmp_path / "y"),
         "--shift", "1", "--tolerance", "0.1"],
    )  # fmt: skip
    assert both.exit_code == 2 and "one of" in both.output
    ratio = CliRunner().invoke(
        app,
        ["train", "calibrate", str(source), "--data", str(relabelled), "--out", str(tmp_path / "y"),
         "--flops-ratio", "0.5", "--tolerance", "0.1"],
    )  # fmt: skip
    assert ratio.exit_code == 2 and "one of" in ratio.output and not (tmp_path / "y").exists()
    bare = CliRunner().invoke(
        app,
        ["train", "calibrate", str(source), "--data", str(data), "--out", str(tmp_path / "z"),
         "--tolerance", "0.1"],
    )  # fmt: skip
    assert bare.exit_code == 2 and "branch errors" in bare.output
