"""Region execution: pieces, cross-fades, back-projection, and what users see (flat stays flat, no grid)."""

import numpy as np
import pytest
import torch

from classsr_cli.engine import Layout, Upscaler
from classsr_cli.engine.backprojection import back_project, bicubic
from classsr_cli.engine.regions import Piece, blend_ramp, cell_bounds, plan_pieces, plan_pieces_by_cost
from classsr_cli.engine.tiling import tile_starts
from classsr_cli.imaging import read_image
from classsr_cli.imaging.bicubic import imresize
from classsr_cli.models import create
from classsr_cli.weights import load_model, read_manifest, weights_dir

SAMPLE = "classsr_cli/samples/picos-de-europa.png"
SHIPPED = sorted(entry["file"] for entry in read_manifest()["models"])


@pytest.fixture(scope="module")
def shipped():
    return {name: load_model(weights_dir() / name) for name in SHIPPED}


def test_pieces_cover_every_cell_once_with_one_class_each():
    rng = np.random.default_rng(0)
    for trial in range(300):
        grid = rng.integers(0, 3, (rng.integers(1, 10), rng.integers(1, 40)))
        if trial % 2:  # large same-class areas, as photos have
            grid = (grid > 1).astype(int)
        cover = np.zeros(grid.shape, int)
        for piece in plan_pieces(grid, max_rows=4):
            assert (grid[piece.row0 : piece.row1, piece.col0 : piece.col1] == piece.branch).all()
            assert piece.row1 - piece.row0 <= 4 and piece.col1 - piece.col0 in (1, 2, 4, 8)
            cover[piece.row0 : piece.row1, piece.col0 : piece.col1] += 1
        assert (cover == 1).all()
    # one class everywhere: the fewest, largest pieces
    assert len(plan_pieces(np.zeros((4, 16), int))) == 2


def _plan_cost(pieces, rows, cols, cost, context, overhead):
    total = 0.0
    for piece in pieces:
        height = sum(rows[piece.row0 : piece.row1]) + 2 * context
        width = sum(cols[piece.col0 : piece.col1]) + 2 * context
        total += cost[piece.branch] * height * width + overhead
    return total


def test_costed_pieces_cover_every_cell_once_on_its_branch_or_a_harder_one():
    rng = np.random.default_rng(1)
    cost, context = [0.4, 0.7, 1.0], 6
    for trial in range(200):
        grid = rng.integers(0, 3, (rng.integers(1, 10), rng.integers(1, 40)))
        if trial % 2:
            grid = (grid > 1).astype(int) * 2
        rows = list(rng.integers(4, 29, grid.shape[0]))  # edge cells are smaller than 28
        cols = list(rng.integers(4, 29, grid.shape[1]))
        overhead = float(rng.choice([0, 300, 3000]))
        max_rows = int(rng.choice([1, 4]))
        pieces = plan_pieces_by_cost(grid, rows, cols, cost, context, overhead, max_rows=max_rows)
        cover = np.zeros(grid.shape, int)
        for piece in pieces:
            cells = grid[piece.row0 : piece.row1, piece.col0 : piece.col1]
            assert piece.branch == cells.max()  # each cell on its own class or a harder one
            assert piece.row0 // max_rows == (piece.row1 - 1) // max_rows and piece.col1 - piece.col0 <= 8
            cover[piece.row0 : piece.row1, piece.col0 : piece.col1] += 1
        assert (cover == 1).all()
        if max_rows == 1:  # one-row strips: the search is exhaustive, never dearer than one class a piece
            spent = _plan_cost(pieces, rows, cols, cost, context, overhead)
            same_class = _plan_cost(plan_pieces(grid, max_rows=1), rows, cols, cost, context, overhead)
            assert spent <= same_class + 1e-6
    # one class everywhere: the fewest, largest pieces
    assert len(plan_pieces_by_cost(np.zeros((4, 16), int), [28] * 4, [28] * 16, cost, context)) == 2
    with pytest.raises(ValueError, match="cannot cover"):
        plan_pieces_by_cost(np.zeros((1, 3), int), [28], [28] * 3, cost, context, widths=(2,))


def _compositions(length: int, largest: int):
    """Every way to cut `length` into consecutive parts of at most `largest`, as lists of part sizes."""
    if length == 0:
        yield []
        return
    for first in range(1, min(length, largest) + 1):
        for rest in _compositions(length - first, largest):
            yield [first, *rest]


def test_costed_pieces_are_the_cheapest_cut_into_column_segments_then_row_ranges():
    rng = np.random.default_rng(2)
    cost, context = [0.4, 0.7, 1.0], 4
    for _ in range(40):
        grid = rng.integers(0, 3, (rng.integers(1, 4), rng.integers(1, 6)))
        rows, cols = list(rng.integers(8, 29, grid.shape[0])), list(rng.integers(8, 29, grid.shape[1]))
        overhead = float(rng.choice([0, 500, 5000]))

        best = np.inf
        for segments in _compositions(grid.shape[1], 8):
            total, c0 = 0.0, 0
            for width in segments:
                cuts = []
                for ranges in _compositions(grid.shape[0], 4):
                    edges = np.cumsum([0, *ranges])
                    cut = [
                        Piece(int(a), int(b), c0, c0 + width, int(grid[a:b, c0 : c0 + width].max()))
                        for a, b in zip(edges[:-1], edges[1:], strict=True)
                    ]
                    cuts.append(_plan_cost(cut, rows, cols, cost, context, overhead))
                total, c0 = total + min(cuts), c0 + width
            best = min(best, total)
        pieces = plan_pieces_by_cost(grid, rows, cols, cost, context, overhead, max_rows=4)
        assert _plan_cost(pieces, rows, cols, cost, context, overhead) == pytest.approx(best)


def test_costed_pieces_run_a_lone_easy_cell_on_its_neighbours_branch_but_keep_easy_areas_easy():
    grid = np.full((4, 16), 2)
    grid[1, 5] = 0  # one sky cell among rock: its own piece would cost its context and split the rock
    grid[:, 10:] = 0  # a wide stretch of sky
    pieces = plan_pieces_by_cost(grid, [28] * 4, [28] * 16, [0.4, 0.7, 1.0], 6, 0.0, max_rows=4)
    runs_on = np.zeros(grid.shape, int)
    for piece in pieces:
        runs_on[piece.row0 : piece.row1, piece.col0 : piece.col1] = piece.branch
    assert runs_on[1, 5] == 2 and (runs_on[:, 10:] == 0).all()


def test_class_module_over_the_band_scores_each_tile_as_the_tile_alone(shipped):
    engine = Upscaler(shipped["classsr-fsrcnn.safetensors"], "cpu")
    rng = torch.Generator().manual_seed(0)
    for height, width in [(200, 300), (116, 480), (32, 32), (61, 45)]:
        lr = torch.rand(3, height + 10, width + 10, generator=rng)
        # tile starts of the band as the engine cuts them: on a 28-pixel grid, the last aligned to the edge
        rows = [y + 3 for y in tile_starts(max(height, 32))]
        cols = [x + 5 for x in tile_starts(max(width, 32))]
        band, executed = engine._band_logits(lr, rows, cols)
        alone = engine.runner(engine.classifier, engine._cut_tiles(lr, rows, cols))
        assert torch.allclose(band, alone, atol=1e-4), (height, width)
        # each 4x4 block once: fewer FLOPs than the tiles alone wherever they overlap
        per_tile = engine.plan.classifier_executed * len(rows) * len(cols)
        assert executed <= per_tile and (executed < 0.85 * per_tile or len(rows) * len(cols) < 9)


def test_cells_split_tile_overlaps_in_the_middle_and_cover_the_axis():
    assert cell_bounds(88, tile_starts(88)) == [0, 30, 58, 88]
    assert cell_bounds(20, tile_starts(32)) == [0, 20]
    for length in range(32, 400, 7):
        bounds = cell_bounds(length, tile_starts(length))
        assert bounds[0] == 0 and bounds[-1] == length and np.all(np.diff(bounds) > 0)
        assert set(np.diff(bounds)[1:-2]) <= {28}  # the last tile is aligned to the edge: its cells differ


def test_cross_fades_of_neighbours_sum_to_one():
    left, right = blend_ramp(0, 10, 0, 20, 2, 4), blend_ramp(10, 20, 0, 20, 2, 4)
    # left covers output pixels [-8, 48), right [32, 88): on the shared stretch the weights sum to 1
    assert np.allclose(left[40:56] + right[:16], 1)
    assert left[0] == 1 and right[-1] == 1  # nothing beyond the image edges


def test_torch_bicubic_matches_matlab_and_back_projection_restores_the_input():
    rng = np.random.default_rng(0)
    image = rng.random((48, 64, 3))
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    # integer factors (convolutions) equal imresize everywhere, edges included; others inside
    for factor in (4, 3, 2, 1 / 2, 1 / 4):
        resized = bicubic(tensor, factor)[0].permute(1, 2, 0).numpy()
        assert np.abs(resized - imresize(image, factor)).max() < 1e-12, factor
    odd = tensor[:, :, :45, :63]
    resized = bicubic(odd, 0.25)[0].permute(1, 2, 0).numpy()  # 45 / 4 is no integer: interpolation
    assert (
        np.abs(resized - imresize(image[:45, :63], 0.25)[: resized.shape[0], : resized.shape[1]])[
            2:-2, 2:-2
        ].max()
        < 1e-12
    )
    lr = tensor[:, :, :12, :16]
    sr = bicubic(lr, 4) + 0.05 * torch.randn(1, 3, 48, 64, dtype=torch.float64)
    before = (bicubic(sr, 0.25) - lr).abs().mean()
    after = (bicubic(back_project(sr, lr, 4), 0.25) - lr).abs().mean()
    assert after < 0.6 * before


def _whole_image(network, lr: np.ndarray) -> np.ndarray:
    """The network run once on the whole image, mirrored by 16 pixels at its edges."""
    image = torch.from_numpy(lr).permute(2, 0, 1)[None]
    index_h = torch.from_numpy(np.pad(np.arange(lr.shape[0]), 16, mode="symmetric"))
    index_w = torch.from_numpy(np.pad(np.arange(lr.shape[1]), 16, mode="symmetric"))
    padded = image[:, :, index_h][:, :, :, index_w]
    with torch.no_grad():
        out = network.eval()(padded)[:, :, 64:-64, 64:-64]
    return out.clamp(0, 1)[0].permute(1, 2, 0).numpy()


def test_a_branch_on_regions_equals_it_on_the_whole_image(shipped):
    """No tile grid: with real context every output pixel is the whole-image one (trained FSRCNN)."""
    lr = read_image(SAMPLE)[:90, :130].astype(np.float32)
    network = shipped["fsrcnn-o.safetensors"]
    expected = _whole_image(network, lr)
    ours, _ = Upscaler(network, "cpu", back_projection=False).upscale_array(lr)
    # 4 pixels of context cover all but the faintest reach of the network: at most 2 grey levels at
    # single pixels, over 60 dB in all (measured 1.5 levels and 67 dB)
    assert np.abs(ours - expected).max() < 2 / 255
    assert 10 * np.log10(1 / np.mean((ours - expected) ** 2)) > 60
    paper, _ = Upscaler(network, "cpu", tiling="paper").upscale_array(lr)
    assert np.abs(paper - expected).max() > 5 / 255  # zero padding at every tile: the grid the regions remove


@pytest.mark.parametrize("name", SHIPPED)
def test_flat_pictures_come_back_flat(shipped, name):
    """Every shipped network, every size (under one tile, odd), edges and corners included."""
    engine = Upscaler(shipped[name], "cpu")
    for color in [(40, 90, 200), (128, 128, 128), (0, 0, 0), (255, 255, 255), (200, 30, 30)]:
        for shape in [(90, 120), (7, 5), (33, 61)]:
            lr = np.ones((*shape, 3), np.float32) * np.array(color, np.float32) / 255
            sr, _ = engine.upscale_array(lr)
            error = np.round(sr * 255) - np.array(color)
            assert np.abs(error).max() <= 2, (color, shape, np.abs(error).max())
            assert np.abs(error.reshape(-1, 3).mean(axis=0)).max() <= 0.25, (color, shape)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_smooth_gradient_stays_within_two_levels_of_bicubic(shipped, name):
    rows, cols = np.meshgrid(np.linspace(0, 1, 50), np.linspace(0, 1, 70), indexing="ij")
    lr = np.stack([0.15 + 0.7 * cols, 0.2 + 0.6 * rows, 0.5 + 0.2 * (cols - rows)], axis=2).astype(np.float32)
    engine = Upscaler(shipped[name], "cpu")
    sr, _ = engine.upscale_array(lr)
    reference = imresize(lr, 4).clip(0, 1) if engine.scale == 4 else lr  # a denoiser: the clean input
    error = np.abs(sr - reference) * 255
    # measured: up to 1.2 levels at the 99.9th percentile, 0.83 to 1.88 at worst for the SR networks, 0 for
    # the denoisers (before the smooth-field fine-tunes of docs/training.md up to 2.9, in a 4-pixel pattern)
    assert np.percentile(error, 99.9) <= 2 and error.max() <= 2


def _random_gradients(count: int) -> list[np.ndarray]:
    """70x50 linear gradients of random colours and slopes, none reaching 0.02 of black or white."""
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.linspace(0, 1, 50), np.linspace(0, 1, 70), indexing="ij")
    gradients = []
    while len(gradients) < count:
        offset = rng.uniform(0.05, 0.95, 3)
        across, down = rng.uniform(-0.4, 0.4, 3), rng.uniform(-0.4, 0.4, 3)
        lr = offset + across * cols[..., None] + down * rows[..., None]
        if 0.02 < lr.min() and lr.max() < 0.98:  # unclipped: no kink where bicubic and a network may differ
            gradients.append(lr.astype(np.float32))
    return gradients


@pytest.mark.parametrize("name", SHIPPED)
def test_random_smooth_gradients_come_back_near_bicubic(shipped, name):
    """Smooth input of any colour: ClassSR sends it to its narrowest branch."""
    engine = Upscaler(shipped[name], "cpu")
    worst = 0.0
    for lr in _random_gradients(12):
        sr, _ = engine.upscale_array(lr)
        reference = imresize(lr, 4).clip(0, 1) if engine.scale == 4 else lr
        worst = max(worst, float(np.abs(sr - reference).max() * 255))
    # measured: 0.95 (FSRCNN-O) to 1.79 (ClassSR-FSRCNN) levels at worst, 0 for the denoisers; 4.4 and 4.6 for
    # the ClassSR models before the smooth-field fine-tunes, 2.4 for ClassSR-FSRCNN with 4 pixels of context
    assert worst <= 2


def test_hidden_colour_under_transparency_changes_nothing_and_alpha_has_no_seams():
    torch.manual_seed(0)
    model = create("fsrcnn", widths=[4, 8, 12]).eval()
    rng = np.random.default_rng(3)
    rgba = rng.random((70, 90, 4), dtype=np.float32)
    rgba[:, :, 3] = 1.0
    rgba[20:50, 30:70, 3] = 0.0  # a transparent hole
    other = rgba.copy()
    other[20:50, 30:70, :3] = rng.random((30, 40, 3), dtype=np.float32)  # other colours under it
    engine = Upscaler(model, "cpu")
    first, first_tally = engine.upscale_array(rgba, Layout(3, True))
    second, second_tally = engine.upscale_array(other, Layout(3, True))
    assert first_tally.class_counts == second_tally.class_counts
    visible = first[:, :, 3:] > 0
    assert np.abs((first[:, :, :3] - second[:, :, :3]) * visible).max() < 1e-5
    assert np.abs(first[:, :, 3] - second[:, :, 3]).max() < 1e-6
    # alpha is one bicubic enlargement of the whole alpha plane: no tile seams
    assert np.abs(first[:, :, 3] - imresize(rgba[:, :, 3], 4).clip(0, 1)).max() < 1e-5


def test_executed_flops_are_counted_against_the_plain_network(shipped):
    lr = read_image(SAMPLE).astype(np.float32)
    network = shipped["fsrcnn-o.safetensors"]
    paper = Upscaler(network, "cpu", tiling="paper")
    _, paper_tally = paper.upscale_array(lr)
    # overlapping 32x32 tiles run every tile's pixels; regions their pieces with `context` pixels around:
    # (28 + 2 context) / 28 of the rows in pieces one cell row tall, (224 + 2 context) / 224 in FSRCNN's
    # eight rows on a CPU; the columns' context and the sample's short last piece add up to 15% more
    assert paper_tally.executed_ratio(paper.plan) == pytest.approx(
        paper_tally.tiles * 32 * 32 / lr[..., 0].size
    )
    one_row = Upscaler(network, "cpu", piece_rows=1)
    _, tally = one_row.upscale_array(lr)
    rows = (28 + 2 * one_row.context) / 28
    assert rows < tally.executed_ratio(one_row.plan) < rows * 1.15
    region = Upscaler(network, "cpu")
    _, tally = region.upscale_array(lr)
    rows = (224 + 2 * region.context) / 224
    assert region.piece_rows == 8 and rows < tally.executed_ratio(region.plan) < rows * 1.15


def test_region_tiling_refuses_unknown_modes():
    from classsr_cli.errors import ModelError

    model = create("fsrcnn", widths=[4, 8, 12])
    with pytest.raises(ModelError, match="tiling"):
        Upscaler(model, "cpu", tiling="grid")
    with pytest.raises(ModelError, match="back-projection"):
        Upscaler(model, "cpu", tiling="paper", back_projection=True)


def test_taller_pieces_as_on_a_gpu_give_the_same_picture(shipped):
    # one branch for every sub-image: with the Class-Module, other piece shapes may also move sub-images to
    # a harder branch (plan_pieces_by_cost), which changes the picture for a reason of its own
    lr = read_image(SAMPLE)[:120, :160].astype(np.float32)
    model = shipped["classsr-fsrcnn.safetensors"]
    short, short_tally = Upscaler(model, "cpu", branch=2, piece_rows=1).upscale_array(lr)
    tall, tall_tally = Upscaler(model, "cpu", branch=2, piece_rows=4).upscale_array(lr)
    assert short_tally.class_counts == tall_tally.class_counts
    assert tall_tally.executed_flops < short_tally.executed_flops  # fewer context margins
    assert np.abs(short - tall).max() < 2 / 255
    assert 10 * np.log10(1 / np.mean((short - tall) ** 2)) > 60


def test_fixed_shapes_as_on_a_gpu_give_the_same_picture_with_a_few_shapes(shipped):
    """On a GPU pieces are cut at sizes fixed by their cell counts and batches padded to powers of two, so
    that images of any size need the same few shapes; the picture stays the one of exact pieces."""
    model = shipped["classsr-fsrcnn.safetensors"]
    seen: set[tuple[int, ...]] = set()
    exact_engine = Upscaler(model, "cpu", branch=2, piece_rows=4, fixed_shapes=False)
    fixed_engine = Upscaler(model, "cpu", branch=2, piece_rows=4, fixed_shapes=True)
    for branch in fixed_engine.branches:
        branch.register_forward_hook(lambda module, inputs, output: seen.add(tuple(inputs[0].shape)))
    image = read_image(SAMPLE).astype(np.float32)
    for height, width in [(120, 160), (97, 133), (61, 45), (7, 5)]:
        lr = image[:height, :width]
        exact, exact_tally = exact_engine.upscale_array(lr)
        fixed, fixed_tally = fixed_engine.upscale_array(lr)
        assert exact_tally.class_counts == fixed_tally.class_counts
        assert np.abs(exact - fixed).max() < 2 / 255, (height, width)  # more context, never less
        if min(height, width) > 32:
            assert 10 * np.log10(1 / np.mean((exact - fixed) ** 2)) > 60, (height, width)
    context = fixed_engine.context
    sizes = {cells * 28 + 4 + 2 * context for cells in (1, 2, 3, 4, 8)}
    for batch, channels, height, width in seen:
        assert batch & (batch - 1) == 0 and channels == 3, (batch, channels)
        assert height in sizes and width in sizes, (height, width)


def test_the_class_module_with_a_gpus_layout_keeps_a_few_shapes_and_nearly_the_cpus_picture(shipped):
    """With the Class-Module, the layout also decides which cells join a harder neighbour's piece, so a GPU's
    four-row pieces of fixed widths route a few cells differently from a CPU's: the picture stays close."""
    model = shipped["classsr-carn.safetensors"]
    fixed_engine = Upscaler(model, "cpu", piece_rows=4, fixed_shapes=True)
    seen: set[tuple[int, ...]] = set()
    for branch in fixed_engine.branches:
        branch.register_forward_hook(lambda module, inputs, output: seen.add(tuple(inputs[0].shape[2:])))
    lr = read_image(SAMPLE)[:120, :160].astype(np.float32)
    on_cpu, _ = Upscaler(model, "cpu").upscale_array(lr)
    as_on_gpu, _ = fixed_engine.upscale_array(lr)
    # measured: 59 to 61 dB between the two on three crops of the sample, single pixels up to 8 levels apart
    assert 10 * np.log10(1 / np.mean((on_cpu - as_on_gpu) ** 2)) > 55
    sizes = {cells * 28 + 4 + 2 * fixed_engine.context for cells in (1, 2, 3, 4, 8)}
    assert all(height in sizes and width in sizes for height, width in seen), seen
