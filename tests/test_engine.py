import numpy as np
import pytest
import torch

from classsr_cli.engine import Layout, Upscaler, upscale_array
from classsr_cli.engine.routing import apply_budget, plan_for
from classsr_cli.engine.runner import BatchRunner
from classsr_cli.engine.tiling import coverage, tile_starts
from classsr_cli.errors import ModelError
from classsr_cli.models import create, create_base


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create("fsrcnn", widths=[4, 8, 12]).eval()


def official_loop(model, lr: np.ndarray) -> np.ndarray:
    """The official code's way: one tile at a time on the 32/28 grid, overlaps averaged."""
    image = torch.from_numpy(lr).permute(2, 0, 1)[None]
    height, width = lr.shape[:2]
    acc = torch.zeros(1, 3, height * 4, width * 4)
    count = torch.zeros_like(acc)
    with torch.no_grad():
        for y in range(0, height - 31, 28):
            for x in range(0, width - 31, 28):
                tile = image[:, :, y : y + 32, x : x + 32]
                out = model.branches[int(model.route(tile))](tile)
                acc[:, :, 4 * y : 4 * y + 128, 4 * x : 4 * x + 128] += out
                count[:, :, 4 * y : 4 * y + 128, 4 * x : 4 * x + 128] += 1
    return (acc / count).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def test_tile_grid_covers_the_whole_axis():
    assert tile_starts(32) == [0]
    assert tile_starts(20) == [0]
    assert tile_starts(88) == [0, 28, 56]  # grid-aligned: 2 * 28 + 32
    assert tile_starts(100) == [0, 28, 56, 68]  # the last tile is aligned to the edge
    for length in range(32, 300):
        starts = tile_starts(length)
        assert coverage(length, starts, 32).min() >= 1
        assert starts[-1] + 32 == length


def test_matches_the_official_tile_loop_on_a_grid_aligned_image(model):
    lr = np.random.default_rng(0).random((88, 116, 3), dtype=np.float32)
    expected = official_loop(model, lr)
    for batch_size in (1, 7, 64):
        sr, _ = Upscaler(model, "cpu", batch_size=batch_size, tiling="paper").upscale_array(lr)
        assert np.abs(sr - expected).max() < 1e-5


@pytest.mark.parametrize("shape", [(100, 90, 3), (20, 13, 3), (1, 1, 3), (33, 200, 3), (300, 40, 3)])
def test_any_size_is_covered_including_the_remainder(model, shape):
    lr = np.random.default_rng(1).random(shape, dtype=np.float32)
    sr, summary = upscale_array(model, lr, device="cpu", batch_size=4)
    assert sr.shape == (shape[0] * 4, shape[1] * 4, 3)
    assert np.isfinite(sr).all() and sr.min() >= 0 and sr.max() <= 1
    assert summary["tiles"] == len(tile_starts(max(shape[0], 32))) * len(tile_starts(max(shape[1], 32)))


def test_strips_of_any_height_give_the_same_result(model):
    lr = np.random.default_rng(2).random((150, 70, 3), dtype=np.float32)
    whole, _ = Upscaler(model, "cpu", batch_size=8).upscale_array(lr)
    engine = Upscaler(model, "cpu", batch_size=8)
    for rows in (1, 17, 64):
        strips = [(y, lr[y : y + rows]) for y in range(0, 150, rows)]
        streamed = np.concatenate(list(engine.stream(150, 70, strips)), axis=0)
        assert np.array_equal(streamed, whole)


def test_grey_and_alpha():
    torch.manual_seed(0)
    model = create("fsrcnn", widths=[4, 8, 12]).eval()
    for branch in model.branches:  # mid-grey outputs, so that clipping rarely hides a difference
        branch.tail_conv.bias.data.fill_(0.5)
    rng = np.random.default_rng(3)
    grey_alpha = rng.random((40, 50, 2), dtype=np.float32) * 0.5 + 0.25
    grey_alpha[:, :, 1] = 0.5
    sr, _ = Upscaler(model, "cpu").upscale_array(grey_alpha, Layout(color_channels=1, has_alpha=True))
    assert sr.shape == (160, 200, 2)
    assert np.allclose(sr[:, :, 1], 0.5, atol=1e-5)  # a flat alpha stays flat through bicubic and stitching
    rgb, _ = Upscaler(model, "cpu").upscale_array(np.repeat(grey_alpha[:, :, :1], 3, axis=2))
    inside = ((rgb > 0) & (rgb < 1)).all(
        axis=2
    )  # grey is the mean before clipping, so compare unclipped pixels
    assert inside.mean() > 0.2
    assert np.allclose(sr[:, :, 0][inside], rgb.mean(axis=2)[inside], atol=1e-5)


def test_fixed_branch_and_flops_ratio(model):
    lr = np.random.default_rng(4).random((60, 60, 3), dtype=np.float32)
    _, base = upscale_array(model, lr, device="cpu", branch=3)
    assert base["flops_ratio"] == pytest.approx(1.0) and base["class_counts"] == [0, 0, base["tiles"]]
    _, small = upscale_array(model, lr, device="cpu", branch=1)
    plan = plan_for(model)
    assert small["flops_ratio"] == pytest.approx(plan.branch_flops[0] / plan.branch_flops[2])
    with pytest.raises(ModelError):
        upscale_array(model, lr, branch=4)


def test_flops_budget_is_kept_and_demotes_the_least_sure_first(model):
    plan = plan_for(model, flops_budget=0.5)
    probs = np.array([[0.1, 0.1, 0.8], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.05, 0.05, 0.9]])
    flops = plan.branch_flops
    classes = apply_budget(probs.copy(), plan, allowance=3 * flops[2] + flops[1])
    assert list(classes) == [2, 1, 2, 2]  # row 1 is the least sure of 'hard' (0.6, ties broken by index)
    lr = np.random.default_rng(5).random((120, 120, 3), dtype=np.float32)
    for budget in (0.2, 0.5, 0.9):
        _, summary = upscale_array(model, lr, device="cpu", flops_budget=budget, batch_size=8)
        assert summary["flops_ratio"] <= budget + 1e-9 or summary["class_counts"][0] == summary["tiles"]
    with pytest.raises(ModelError):
        plan_for(model, flops_budget=1.5)


def test_a_single_network_runs_without_classifier():
    net = create_base("fsrcnn", 8).eval()
    sr, summary = upscale_array(net, np.zeros((40, 40, 3), np.float32), device="cpu")
    assert summary["class_counts"] == [summary["tiles"]] and summary["flops_ratio"] == pytest.approx(1.0)


def test_out_of_memory_halves_the_batch_and_retries():
    class FailsOnBigBatches(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 3:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
            return x * 2

    runner = BatchRunner(torch.device("cpu"), torch.float32, batch_size=16)
    x = torch.rand(10, 3, 4, 4)
    assert torch.equal(runner(FailsOnBigBatches(), x), x * 2)
    assert runner.batch_size == 2

    class AlwaysFails(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        BatchRunner(torch.device("cpu"), torch.float32, 4)(AlwaysFails(), x)


@pytest.mark.parametrize("family", ["fsrcnn", "carn"])
def test_inference_rewrites_keep_the_outputs(family):
    import copy

    from classsr_cli.engine.inference_graph import PhaseShuffle, optimize_for_inference

    torch.manual_seed(0)
    net = create(family).eval()
    for module in net.modules():  # batch norm with statistics far from the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    fast = optimize_for_inference(copy.deepcopy(net))
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.ConvTranspose2d)) for m in fast.modules())
    # FSRCNN's tail shuffles phase-major channels; CARN's grouped upsampling convolutions keep theirs
    phase_major = any(isinstance(m, PhaseShuffle) for m in fast.modules())
    assert phase_major == (family == "fsrcnn")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        for slow_branch, fast_branch in zip(net.branches, fast.branches, strict=True):
            assert torch.allclose(slow_branch(x), fast_branch(x), atol=1e-5)
            out = fast_branch(x.contiguous(memory_format=torch.channels_last))
            assert torch.allclose(slow_branch(x), out, atol=1e-5)
            assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "kernel, stride, padding, output_padding", [(4, 2, 1, 0), (9, 4, 3, 1), (3, 2, 1, 1)]
)
def test_transposed_convolution_becomes_subpixel_convolution(kernel, stride, padding, output_padding):
    from classsr_cli.engine.inference_graph import subpixel_equivalent

    torch.manual_seed(0)
    deconv = torch.nn.ConvTranspose2d(5, 3, kernel, stride, padding, output_padding)
    fast = subpixel_equivalent(deconv)
    x = torch.rand(2, 5, 7, 9)
    with torch.no_grad():
        assert torch.allclose(deconv(x), fast(x), atol=1e-5)
    assert subpixel_equivalent(torch.nn.ConvTranspose2d(5, 3, 5, 2, 1)) is None  # output is not 2x the input


def test_a_cuda_out_of_memory_error_halves_the_batch_once():
    # the exception type a GPU raises (it exists on CPU builds too), raised once as a GPU that is full
    class RunsOutOnce(torch.nn.Module):
        failed = False

        def forward(self, x):
            if x.shape[0] > 8 and not self.failed:
                self.failed = True
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            return x + 1

    runner = BatchRunner(torch.device("cpu"), torch.float32, batch_size=16)
    x = torch.rand(20, 3, 4, 4)
    module = RunsOutOnce()
    assert torch.equal(runner(module, x), x + 1)
    assert module.failed and runner.batch_size == 8


def test_mirrored_rows_are_the_image_mirrored_at_every_edge():
    """The engine's reader of LR rows (`_MirroredRows`): any rows, inside the image or mirrored past its top
    and bottom, with mirrored columns on both sides, wider than the image too, from strips of any height."""
    from classsr_cli.engine.upscaler import _MirroredRows

    rng = np.random.default_rng(0)

    def mirror(index, length):
        folded = np.mod(index, 2 * length)
        return np.where(folded < length, folded, 2 * length - 1 - folded)

    for trial in range(200):
        height, width = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        left, right = int(rng.integers(0, 40)), int(rng.integers(0, 40))
        image = rng.random((height, width, 3)).astype(np.float32)
        cuts = sorted({*rng.integers(1, height + 1, size=3).tolist(), height})
        strips = [(top, image[top:bottom]) for top, bottom in zip([0, *cuts[:-1]], cuts, strict=True)]
        source = _MirroredRows(iter(strips), height, width, 3, left, right)
        columns = mirror(np.arange(-left, width + right), width)
        start, lowest = -int(rng.integers(0, 10)), 0
        while start < height:
            stop = start + int(rng.integers(1, 30))
            rows = mirror(np.arange(start, stop), height)
            if rows.min() < lowest:  # requests never move back (the engine's bands move down)
                break
            lowest = int(rows.min())
            assert np.array_equal(source.rows(start, stop), image[rows][:, columns]), trial
            start += int(rng.integers(1, 20))


@pytest.mark.parametrize("height", [60, 57, 200])
def test_a_flops_budget_holds_where_a_band_holds_only_a_sub_image_begun_above(height):
    """Bands one cell row high (CARN on a CPU): the last cell row of these heights lies in the sub-image
    aligned to the bottom edge, which begins in the band above; it takes the classes decided there."""
    torch.manual_seed(0)
    model = create("carn", widths=[8, 12, 16]).eval()
    lr = np.random.default_rng(6).random((height, 223, 3), dtype=np.float32)
    engine = Upscaler(model, "cpu", flops_budget=0.5)
    assert engine.shapes.band_rows == 1
    sr, tally = engine.upscale_array(lr)
    assert sr.shape == (4 * height, 4 * 223, 3)
    assert tally.flops_ratio(engine.plan) <= 0.5 + 1e-9 or tally.class_counts[0] == tally.tiles
