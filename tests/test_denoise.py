"""Denoising (the paper's 4.4): DnCNN, noisy data, training, `classsr denoise` and the bench protocol."""

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from classsr_cli.cli import app
from classsr_cli.data.dataset import SubImageDataset, prepared_info
from classsr_cli.data.noise import add_noise, noisy_image
from classsr_cli.data.prepare import prepare_data
from classsr_cli.engine import Upscaler
from classsr_cli.errors import DataError, ModelError, WeightsError
from classsr_cli.models import create, create_base
from classsr_cli.train import TrainRequest, train_branches
from classsr_cli.weights import load_weights, save_model

QUICK = ["--val-crop", "24", "--workers", "0", "--checkpoint-minutes", "0"]


def run_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four synthetic 96x128 photos: a flat half and a textured half each."""
    src = tmp_path_factory.mktemp("denoise-photos")
    y, x = np.mgrid[0:96, 0:128]
    for i in range(4):
        wave = np.sin(x / (2 + i)) * 70 + np.cos(y / (3 + i)) * 50 + 128
        photo = np.stack([wave, 255 - wave, wave * 0.6], -1)
        photo[:48] = (60 + 30 * i, 120, 200 - 20 * i)
        cv2.imwrite(str(src / f"p{i}.png"), np.clip(photo, 0, 255).astype(np.uint8))
    return src


@pytest.fixture(scope="module")
def data(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("denoise-data") / "prepared"
    prepare_data(
        photos,
        out,
        scales=(1.0,),
        sr_scale=1,
        stride=16,
        classes=3,
        val_fraction=0.25,
        workers=1,
        show_progress=False,
        task="denoise",
        noise_sigma=25,
    )
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained ClassSR-DnCNN (widths 4, 6, 8) and a DnCNN-O of width 8, as weights files."""
    folder = tmp_path_factory.mktemp("denoise-weights")
    torch.manual_seed(0)
    save_model(create("dncnn", [4, 6, 8]), folder / "classsr.safetensors", "dncnn")
    save_model(create_base("dncnn", 8), folder / "base.safetensors", "dncnn")
    return folder / "classsr.safetensors", folder / "base.safetensors"


def test_dncnn_flops_are_the_papers():
    # Table 5: DnCNN-O 1.14G per 32x32 sub-image; the Denoise-Modules are 38, 52 and 64 channels wide
    costs = run_cli("flops", "--model", "dncnn")
    assert costs["scale"] == 1
    assert [b["width"] for b in costs["branches"]] == [38, 52, 64]
    assert [round(b["flops"] / 1e6, 2) for b in costs["branches"]] == [403.44, 753.35, 1139.54]
    network = create_base("dncnn")
    x = torch.rand(2, 3, 20, 27)
    assert network(x).shape == x.shape


def test_noise_is_seeded_quantised_and_of_the_asked_sigma():
    clean = np.full((200, 200, 3), 128, np.uint8)
    noisy = noisy_image(clean, 25, seed=3)
    assert np.array_equal(noisy, noisy_image(clean, 25, seed=3))
    assert not np.array_equal(noisy, noisy_image(clean, 25, seed=4))
    assert np.allclose(noisy * 255, np.round(noisy * 255), atol=1e-3)  # 8-bit steps, as a stored file
    assert abs(float((noisy * 255 - 128).std()) - 25) < 0.5
    dark = add_noise(torch.zeros(1000), 25, torch.Generator().manual_seed(0))
    assert float(dark.min()) == 0.0 and float(dark.max()) <= 1.0  # clipped like an 8-bit image


def test_prepared_denoise_data_is_clean_scale_one_and_ranked_on_noisy_input(data):
    info = prepared_info(data)
    assert info["arguments"]["task"] == "denoise" and info["arguments"]["noise_sigma"] == 25
    assert info["arguments"]["scale"] == 1 and info["patch_hr"] == 32
    entry = info["images"][0]["scales"][0]
    assert entry["lr"] == entry["hr"]  # one clean file serves as both: noise is added when used
    dataset = SubImageDataset(data, augment=False)
    lr, hr, _ = dataset[0]
    assert torch.equal(lr, hr) and lr.shape == (3, 32, 32)
    # ranked by the blur stand-in on noisy input: the flat halves are the simple class
    index = np.load(data / "index.npy")
    train = index[index["split"] == 0]
    assert train["y"][train["cls"] == 0].mean() < train["y"][train["cls"] == 2].mean()


def test_prepare_refuses_a_scale_or_sigma_that_makes_no_sense(photos, tmp_path):
    with pytest.raises(DataError, match="--scale must be 1"):
        prepare_data(photos, tmp_path / "a", sr_scale=4, task="denoise", show_progress=False)
    with pytest.raises(DataError, match="noise-sigma"):
        prepare_data(photos, tmp_path / "b", sr_scale=1, task="denoise", noise_sigma=0, show_progress=False)
    with pytest.raises(DataError, match="neither blur"):
        prepare_data(
            photos, tmp_path / "c", sr_scale=1, task="denoise", rank_model="carn", show_progress=False
        )


def test_a_denoiser_trains_on_noise_drawn_on_the_fly_and_resumes(data, tmp_path):
    out = tmp_path / "run"
    request = TrainRequest(
        data=data,
        out=out,
        model="dncnn",
        widths=[8],
        options={"iters": 6, "batch_size": 4, "val_every": 0, "log_every": 1, "val_crop": 24, "workers": 0},
    )
    summary = train_branches(request, all_data=True, console=Console(file=io.StringIO()))
    network = load_weights(summary["weights"]).model
    assert network.scale == 1 and network.width == 8
    records = [json.loads(line) for line in (out / "base.jsonl").read_text().splitlines()]
    losses = [r["l1"] for r in records if r["type"] == "train"]
    # the untrained DnCNN returns its input: its L1 to the clean target is the noise's, about 0.078 at
    # sigma 25 (E|n| = sigma * sqrt(2 / pi) / 255), which noise-free inputs would not give
    assert 0.05 < losses[0] < 0.1
    assert summary["val_psnr"] is not None


def test_training_refuses_a_model_of_the_other_task(data, tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", "branches", "--data", str(data), "--model", "fsrcnn", "--all-data", "--widths", "8",
         "--out", str(tmp_path / "run"), "--iters", "1", *QUICK],
    )  # fmt: skip
    assert result.exit_code == 2 and "prepared for denoising" in result.output


def test_engine_at_scale_one_keeps_the_size_and_skips_back_projection(tiny_models):
    model = load_weights(tiny_models[0]).model
    engine = Upscaler(model, "cpu")
    assert not engine.back_projection and engine.scale == 1
    image = np.random.default_rng(0).random((45, 70, 3)).astype(np.float32)
    out, tally = engine.upscale_array(image)
    assert out.shape == image.shape and tally.tiles == 2 * 3
    with pytest.raises(ModelError, match="back-projection"):
        Upscaler(model, "cpu", back_projection=True)


def test_denoise_command_keeps_size_depth_and_alpha(tiny_models, tmp_path):
    rgba = np.zeros((40, 50, 4), np.uint16)
    rgba[..., :3] = np.random.default_rng(1).integers(0, 65535, (40, 50, 3))
    rgba[..., 3] = 65535
    rgba[:10, :10, 3] = 0
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), rgba)
    target = tmp_path / "out.png"
    summary = run_cli("denoise", str(source), str(target), "--weights", str(tiny_models[0]))
    out = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    assert out.shape == rgba.shape and out.dtype == np.uint16
    assert np.array_equal(out[..., 3], rgba[..., 3])  # alpha passes through untouched at scale 1
    assert summary["out_width"] == 50 and summary["tiles"] == 4


def test_models_of_the_other_task_are_refused_in_one_line(tiny_models, tmp_path):
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), np.zeros((40, 40, 3), np.uint8))
    for args, message in [
        (["upscale", str(source), str(tmp_path / "a.png"), "--model", "dncnn"], "use `classsr denoise`"),
        (["upscale", str(source), str(tmp_path / "b.png"), "-w", str(tiny_models[1])], "denoising model"),
        (["denoise", str(source), str(tmp_path / "c.png"), "--model", "carn"], "use `classsr upscale`"),
    ]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("?.png"))


def test_bench_denoise_rows_are_base_classsr_and_the_noisy_input(tiny_models, photos, tmp_path):
    (tmp_path / "HR").mkdir()
    for name in ("p0.png", "p1.png"):
        (tmp_path / "HR" / name).write_bytes((photos / name).read_bytes())
    classsr, base = tiny_models
    document = run_cli(
        "bench", str(tmp_path), "--weights", str(classsr), "--base-weights", str(base), "--noise-sigma", "25"
    )
    assert document["task"] == "denoise" and document["scale"] == 1 and document["border"] == 0
    names = [row["name"] for row in document["rows"]]
    assert names == ["DnCNN-O", "ClassSR-DnCNN", "Noisy input (sigma 25)"]
    noisy = document["rows"][2]
    # sigma 25 on 0-255: 20.2 dB before clipping at 0 and 255, which only lowers the error
    assert 20.0 < noisy["psnr"] < 21.5
    assert "gain_over_noisy" in document["rows"][0] and "gain_over_bicubic" not in document["rows"][0]
    # every row saw the same noise: rerunning gives the same figures
    again = run_cli(
        "bench", str(tmp_path), "--weights", str(classsr), "--base-weights", str(base), "--noise-sigma", "25"
    )
    assert [r["psnr"] for r in again["rows"]] == [r["psnr"] for r in document["rows"]]


def test_stage_two_and_calibration_see_noisy_inputs(data, tiny_models, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage1.safetensors").write_bytes(tiny_models[0].read_bytes())
    args = ["--data", str(data), "--model", "dncnn", "--out", str(run), "--iters", "2", "--batch-size", "6"]
    summary = run_cli("train", "classifier", *args, *QUICK, "--w-image", "0", "--w-label", "1")
    assert Path(summary["weights"]).name == "stage2.safetensors"
    assert load_weights(summary["weights"]).model.scale == 1
    calibrated = tmp_path / "calibrated.safetensors"
    result = run_cli(
        "train", "calibrate", summary["weights"], "--data", str(data), "--out", str(calibrated),
        "--flops-ratio", "0.8",
    )  # fmt: skip
    assert result["flops_ratio_after"] <= 0.8 + 1e-9 and calibrated.exists()


def test_export_describes_the_denoising_engine(tiny_models, tmp_path):
    pytest.importorskip("onnx")
    document = run_cli("export", str(tmp_path / "onnx"), "--weights", str(tiny_models[0]))["manifest"]
    engine = json.dumps(document)
    assert document["scale"] == 1 and '"context": 8' in engine and "back-projection" not in engine


def test_an_official_checkpoint_cannot_claim_to_be_dncnn(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"body.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), np.zeros((40, 40, 3), np.uint8))
    result = CliRunner().invoke(
        app, ["denoise", str(source), str(tmp_path / "o.png"), "-m", "dncnn", "-w", str(path)]
    )
    assert result.exit_code == 2 and "no official checkpoint layout" in result.output


def test_a_narrowed_dncnn_keeps_the_channels_that_matter():
    """Channels whose BatchNorm scale and shift are zero carry nothing: narrowing drops exactly them, and the
    narrow network computes what the wide one did."""
    from classsr_cli.models.dncnn import DnCNN

    torch.manual_seed(0)
    wide = DnCNN(width=12, depth=5).eval()
    dead = torch.tensor([1, 4, 5, 9])  # 12 - 4 = 8 channels live in every hidden layer
    with torch.no_grad():
        convs = [m for m in wide.body if isinstance(m, torch.nn.Conv2d)]
        convs[0].weight[dead] = 0
        convs[0].bias[dead] = 0
        for norm in (m for m in wide.body if isinstance(m, torch.nn.BatchNorm2d)):
            norm.weight[dead] = 0
            norm.bias[dead] = 0
            norm.running_mean.uniform_(-0.1, 0.1)
            norm.running_var.uniform_(0.5, 2.0)
        convs[-1].weight.normal_(std=0.1)  # a residual that matters
    narrow = wide.narrowed(8).eval()
    assert narrow.width == 8 and narrow.scale == 1
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    image = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(narrow(image), wide(image), atol=1e-5, rtol=0)
        assert (wide(image) - image).abs().mean() > 1e-3  # the comparison is not of two identities
    with pytest.raises(ValueError):
        wide.narrowed(12)


def test_init_from_a_wider_denoiser_narrows_it(data, tmp_path):
    """--init with a wider DnCNN: the narrow network starts from its most important channels (at a learning
    rate of 1e-9 it ends where it started); a wider FSRCNN cannot be narrowed and is refused."""
    from classsr_cli.models.dncnn import DnCNN

    torch.manual_seed(2)
    wide = DnCNN(width=8)
    wide_path = save_model(wide, tmp_path / "wide.safetensors", "dncnn")
    request = TrainRequest(
        data=data,
        out=tmp_path / "run",
        model="dncnn",
        widths=[6],
        init=wide_path,
        options={"iters": 1, "batch_size": 4, "val_every": 0, "log_every": 1, "val_crop": 24, "workers": 0,
                 "lr": 1e-9},
    )  # fmt: skip
    summary = train_branches(request, all_data=True, console=Console(file=io.StringIO()))
    start = dict(wide.narrowed(6).named_parameters())  # a training step moves the BatchNorm statistics
    tuned = load_weights(summary["weights"]).model.state_dict()
    for key, value in start.items():
        torch.testing.assert_close(tuned[key], value.detach(), atol=1e-5, rtol=0, msg=key)

    fsrcnn = save_model(create_base("fsrcnn", 12), tmp_path / "fsrcnn.safetensors", "fsrcnn")
    refused = TrainRequest(data, tmp_path / "refused", model="fsrcnn", widths=[8], init=fsrcnn)
    with pytest.raises(WeightsError, match="width 12"):
        train_branches(refused, all_data=True, console=Console(file=io.StringIO()))


def test_a_clean_fraction_of_the_batch_trains_without_noise(data, tmp_path):
    """--clean-fraction 1: every input is the clean sub-image, so the untrained DnCNN (output = input) starts
    at an L1 near zero instead of the noise's 0.078; recorded in the checkpoint's settings."""
    out = tmp_path / "run"
    options = {"iters": 2, "batch_size": 4, "val_every": 0, "log_every": 1, "val_crop": 24, "workers": 0}
    request = TrainRequest(data, out, model="dncnn", widths=[8], options={**options, "clean_fraction": 1.0})
    train_branches(request, all_data=True, console=Console(file=io.StringIO()))
    records = [json.loads(line) for line in (out / "base.jsonl").read_text().splitlines()]
    assert [r["l1"] for r in records if r["type"] == "train"][0] < 0.01
    checkpoint = torch.load(out / "base.ckpt", weights_only=False)
    assert checkpoint["options"]["clean_fraction"] == 1.0


def test_cheapest_labels_trade_error_against_flops_within_the_ratio():
    from classsr_cli.train.relabel import cheapest_labels

    costs = np.array([0.35, 0.66, 1.0])
    rng = np.random.default_rng(0)
    base = rng.uniform(10, 1000, 500)
    # the narrow branches lose more where the base network already errs most (textured sub-images)
    errors = np.stack([base * (1 + rng.uniform(0, 0.6, 500)), base * 1.1, base], axis=1)
    errors[:50] = 5.0  # all three equally good: these must go to the cheapest branch
    labels, lam = cheapest_labels(errors, costs, 0.6)
    assert costs[labels].mean() <= 0.6 and lam > 0 and (labels[:50] == 0).all()
    # the smallest such lambda: a little less spends more than the ratio
    looser = np.argmin(errors + 0.99 * lam * costs, axis=1)
    assert costs[looser].mean() > 0.6
    # a ratio the base alone meets keeps every sub-image on its most accurate branch
    labels, lam = cheapest_labels(errors, costs, 1.0)
    assert lam == 0 and (labels == np.argmin(errors, axis=1)).all()
    with pytest.raises(ModelError):
        cheapest_labels(errors, costs, 0.2)


def test_the_expected_routing_cost_weighs_each_sub_image_by_what_its_choice_costs():
    from classsr_cli.train.losses import expected_cost
    from classsr_cli.train.relabel import routing_costs

    errors = np.array([[10.0, 4.0, 1.0], [2.0, 2.0, 2.0], [100.0, 10.0, 1.0]])
    costs = routing_costs(errors, np.array([1 / 3, 2 / 3, 1.0]), 3.0, np.array([True, True, False]))
    # plus lambda x FLOPs (1, 2, 3), less the row's least, over the training rows' mean largest (7, 2): 4.5
    assert np.allclose(costs[:2], np.array([[7.0, 2.0, 0.0], [0.0, 1.0, 2.0]]) / 4.5)
    logits = torch.zeros(3, 3, requires_grad=True)
    loss = expected_cost(torch.softmax(logits, dim=1), torch.from_numpy(costs))
    assert loss.item() == pytest.approx(costs.sum(axis=1).mean() / 3, rel=1e-6)
    loss.backward()
    # each row's probability moves towards its cheapest branch, and further where the choice costs more
    assert (logits.grad.argmin(dim=1) == torch.tensor([2, 0, 2])).all()
    assert logits.grad[2].abs().sum() > logits.grad[0].abs().sum() > logits.grad[1].abs().sum()


def test_relabelled_data_shares_the_images_and_trains_a_class_module(data, tiny_models, tmp_path):
    out = tmp_path / "relabelled"
    summary = run_cli(
        "train",
        "relabel",
        str(tiny_models[0]),
        "--data",
        str(data),
        "--out",
        str(out),
        "--flops-ratio",
        "0.7",
    )
    assert summary["flops_ratio"] <= 0.7 and sum(summary["class_counts"]) == len(SubImageDataset(data))
    errors = np.load(out / "branch_errors.npy")
    index = np.load(out / "index.npy")
    from classsr_cli.flops import measure

    flops = np.array([measure(branch).flops for branch in load_weights(tiny_models[0]).model.branches])
    expected = np.argmin(errors + summary["lambda"] * flops / flops[-1], axis=1)
    assert (index["cls"] == expected).all()
    assert (out / "images").resolve() == (data / "images").resolve()
    assert SubImageDataset(out).class_counts() == summary["class_counts"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage1.safetensors").write_bytes(tiny_models[0].read_bytes())
    args = ["--data", str(out), "--model", "dncnn", "--out", str(run), "--iters", "2", "--batch-size", "6"]
    run_cli("train", "classifier", *args, *QUICK, "--w-image", "0", "--w-label", "1")
    # the route costs beside them: each branch's error plus lambda x FLOPs, 0 on the label, of order 1
    costs = np.load(out / "route_costs.npy")
    train = index["split"] == 0
    assert costs.shape == errors.shape and costs.dtype == np.float32
    assert (costs[np.arange(len(costs)), index["cls"]] == 0).all() and (costs >= 0).all()
    assert costs[train].max(axis=1).mean() == pytest.approx(1.0, rel=1e-5)
    shown = SubImageDataset(out, augment=False, route_costs=True)
    assert torch.equal(shown[0][2], torch.from_numpy(costs[train][0]))
    costly = tmp_path / "run-cost"
    costly.mkdir()
    (costly / "stage1.safetensors").write_bytes(tiny_models[0].read_bytes())
    args[args.index(str(run))] = str(costly)
    run_cli("train", "classifier", *args, *QUICK, "--w-image", "0", "--w-cost", "1")
    log = [json.loads(line) for line in (costly / "classifier.jsonl").read_text().splitlines()]
    assert "cost" in [r for r in log if r["type"] == "train"][-1]
    for source, extra, message in (
        (out, ["--w-label", "1"], "choose one"),
        (data, [], "has no route_costs.npy"),  # not relabelled
    ):
        refused = ["--data", str(source), "--model", "dncnn", "--out", str(tmp_path / "refused")]
        refused += ["--init", str(tiny_models[0]), "--iters", "2", "--w-image", "0", "--w-cost", "1", *extra]
        result = CliRunner().invoke(app, ["train", "classifier", *refused, *QUICK])
        assert result.exit_code != 0 and message in result.output and result.output.startswith("error: ")
    result = CliRunner().invoke(
        app, ["train", "relabel", str(tiny_models[0]), "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 2 and result.output.startswith("error: ")  # never over an existing folder
    unreachable = tmp_path / "cheaper-than-branch-1"
    args = [str(tiny_models[0]), "--data", str(data), "--out", str(unreachable), "--flops-ratio", "0.1"]
    result = CliRunner().invoke(app, ["train", "relabel", *args])
    assert result.exit_code == 2 and "--flops-ratio must lie between" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relabelled", "run", "run-cost"]  # none half-made
