"""On a CUDA GPU: the engine in fp16 and bf16 against the CPU, out-of-memory back-off, the CLI end to end, and
the GPU training data. Every test here is marked `cuda` and skipped without a GPU; `python -m
benchmarks.gpu_run` runs them first (`pytest -m cuda`) on a GPU machine."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from classsr_cli.engine import Upscaler
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.weights import load_weights

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SAMPLE = Path(__file__).resolve().parent.parent / "classsr_cli" / "samples" / "picos-de-europa.png"
CPU_OUTPUTS: dict = {}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The bundled sample, float32 RGB in [0, 1], read with OpenCV (the checks must not depend on pyvips)."""
    import cv2

    return cv2.imread(str(SAMPLE), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0


def cpu_output(family: str, photo: np.ndarray, branch: int | None):
    if (family, branch) not in CPU_OUTPUTS:
        model = load_weights(family, kind="classsr").model
        sr, tally = Upscaler(model, "cpu", "fp32", branch=branch).upscale_array(photo)
        CPU_OUTPUTS[family, branch] = (unit_to_uint8(sr), tally.class_counts)
    return CPU_OUTPUTS[family, branch]


@pytest.mark.parametrize("family", ["fsrcnn", "carn"])
def test_fp16_on_cuda_gives_the_cpu_output_within_one_grey_level(family, photo):
    # the base network on every tile: a tile routed differently would differ by a branch, not by precision;
    # pieces one row tall as on the CPU, so that only the precision differs
    expected, _ = cpu_output(family, photo, branch=3)
    model = load_weights(family, kind="classsr").model
    sr, _ = Upscaler(model, "cuda", "fp16", branch=3, piece_rows=1).upscale_array(photo)
    difference = np.abs(unit_to_uint8(sr).astype(int) - expected.astype(int))
    assert difference.max() <= 1


@pytest.mark.parametrize("family", ["fsrcnn", "carn"])
def test_bf16_on_cuda_stays_near_the_cpu_output(family, photo):
    # bf16 keeps 8 mantissa bits: on the development CPU, FSRCNN's base network in bf16 put 1.0% of the
    # sample's values more than one grey level from fp32 (at most 9 levels, 0.32 on average)
    expected, _ = cpu_output(family, photo, branch=3)
    model = load_weights(family, kind="classsr").model
    sr, _ = Upscaler(model, "cuda", "bf16", branch=3, piece_rows=1).upscale_array(photo)
    difference = np.abs(unit_to_uint8(sr).astype(int) - expected.astype(int))
    assert (difference <= 1).mean() >= 0.98 and difference.mean() < 0.5


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_class_module_on_cuda_routes_as_on_the_cpu(precision, photo):
    # the CPU with the GPU's piece layout: the layout decides which cells join a harder neighbour's piece
    model = load_weights("carn", kind="classsr").model
    _, cpu_tally = Upscaler(model, "cpu", "fp32", piece_rows=4, fixed_shapes=True).upscale_array(photo)
    expected = cpu_tally.class_counts
    _, tally = Upscaler(model, "cuda", precision).upscale_array(photo)
    moved = sum(abs(a - b) for a, b in zip(tally.class_counts, expected, strict=True)) / 2
    assert moved <= 0.02 * tally.tiles  # a few borderline tiles may change class


def test_out_of_memory_on_cuda_halves_the_batch_and_retries():
    from classsr_cli.engine.runner import BatchRunner

    class RunsOutOnce(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.failed = False

        def forward(self, x):
            if x.shape[0] > 8 and not self.failed:
                self.failed = True
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            return self.conv(x)

    module = RunsOutOnce().to("cuda", memory_format=torch.channels_last)
    runner = BatchRunner(torch.device("cuda"), torch.float32, batch_size=16)
    tiles = torch.rand(20, 3, 32, 32)
    result = runner(module, tiles)
    assert module.failed and runner.batch_size == 8
    with torch.no_grad():
        expected = module(tiles.to("cuda").contiguous(memory_format=torch.channels_last)).cpu()
    torch.testing.assert_close(result, expected)


def test_the_cli_upscales_on_cuda_end_to_end(tmp_path):
    pytest.importorskip("pyvips")
    from typer.testing import CliRunner

    from classsr_cli.cli import app
    from classsr_cli.imaging import read_image

    outputs = {}
    for device in ("cpu", "cuda"):
        target = tmp_path / f"{device}.png"
        arguments = ["upscale", str(SAMPLE), str(target), "-m", "fsrcnn", "--branch", "3", "--device", device]
        result = CliRunner().invoke(app, [*arguments, "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["device"].startswith(device)
        outputs[device] = read_image(target)
    assert outputs["cuda"].shape == outputs["cpu"].shape
    assert outputs["cuda"].shape[:2] == (4 * 360, 4 * 480)
    # a GPU runs taller pieces than a CPU: where 4 pixels of context fall short of the network's reach that
    # moves single pixels by a grey level or so (tests/test_regions.py), on top of fp16 rounding
    difference = np.abs(outputs["cuda"] - outputs["cpu"]) * 255
    assert difference.max() <= 3 + 1e-3 and (difference <= 1 + 1e-3).mean() > 0.999


def test_bicubic_on_cuda_matches_numpy():
    from classsr_cli.imaging.bicubic import imresize, imresize_tensor

    image = (np.random.default_rng(0).random((203, 157, 3)) * 255).astype(np.float32)
    for arguments in ({"scale": 0.6}, {"output_shape": (50, 39)}):
        expected = imresize(image, **arguments)
        tensor = torch.from_numpy(image).permute(2, 0, 1).cuda()
        result = imresize_tensor(tensor, **arguments).permute(1, 2, 0).cpu().numpy()
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-3)


def test_training_pairs_on_cuda_match_the_cpu_ones():
    from classsr_cli.train.device_data import DevicePhotos, Positions

    rng = np.random.default_rng(1)
    photos = [(rng.random((300, 260, 3)) * 255).astype(np.uint8)]
    gpu = DevicePhotos(photos, "cuda", patch=16)
    cpu = DevicePhotos(photos, "cpu", patch=16)
    positions = gpu.draw(256, torch.Generator("cuda").manual_seed(0))
    moved = Positions(*(getattr(positions, name).cpu() for name in ("image", "y", "x", "code")))
    for on_gpu, on_cpu in zip(gpu.crops(positions), cpu.crops(moved), strict=True):
        difference = (on_gpu.cpu() - on_cpu).abs()
        # the pyramid's float32 sums may round across a half grey level differently on the GPU (a grey level
        # apart, rarely), and the division by 255 may differ in its last bit (measured on an H200: 3e-8)
        assert difference.max() <= 1 / 255 + 1e-6 and (difference > 1e-6).float().mean() < 1e-3


def test_a_bf16_channels_last_training_step_on_cuda_learns():
    from classsr_cli.models import create_base
    from classsr_cli.train.device_data import DevicePhotos
    from classsr_cli.train.loop import training_autocast, training_step
    from classsr_cli.train.losses import LossWeights

    torch.manual_seed(0)
    y, x = np.mgrid[0:256, 0:256]
    wave = (np.sin(x / 7.0) * np.cos(y / 11.0) * 100 + 128).astype(np.uint8)
    photos = DevicePhotos([np.stack([wave, wave, 255 - wave], -1)], "cuda")
    model = create_base("fsrcnn", 16).cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator("cuda").manual_seed(0)
    autocast = training_autocast("auto", torch.device("cuda"))
    losses = []
    for _ in range(60):
        low, high = photos.crops(photos.draw(32, generator))
        loss, _, _ = training_step(model, optimizer, low, high, False, LossWeights(), autocast=autocast)
        losses.append(loss.detach().item())
    assert all(np.isfinite(losses)) and np.mean(losses[-10:]) < 0.5 * losses[0]
