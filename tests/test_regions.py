"""Region execution: pieces, cross-fades, back-projection, and what users see (flat stays flat, no grid)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from classsr_cli.engine import Layout, Upscaler
from classsr_cli.engine.backprojection import back_project, bicubic
from classsr_cli.engine.chunks import VIRTUAL, ZERO_RAMP, Geometry, Shapes, plan_chunk, ramp_code, ramps
from classsr_cli.imaging import read_image
from classsr_cli.imaging.bicubic import imresize
from classsr_cli.models import create
from classsr_cli.weights import load_model, read_manifest, weights_dir

SAMPLE = "classsr_cli/samples/picos-de-europa.png"
SHIPPED = sorted(entry["file"] for entry in read_manifest()["models"])


@pytest.fixture(scope="module")
def shipped():
    return {name: load_model(weights_dir() / name) for name in SHIPPED}


def _cover(plan, grid):
    """How many pieces cover each cell, checking each piece's branch against its cells."""
    cover = np.zeros(grid.shape, int)
    for row0, row1, col0, col1, branch in plan.pieces:
        cells = grid[row0:row1, col0:col1]
        assert branch == cells.max() >= 0  # the hardest of its cells; never a piece of virtual cells alone
        cover[row0:row1, col0:col1] += 1
    return cover


def _plan_cost(plan, cost, context, overhead=0.0, row_px=None, col_px=None):
    rows = np.concatenate([[0], np.cumsum(row_px if row_px is not None else [28] * 8)])
    cols = np.concatenate([[0], np.cumsum(col_px if col_px is not None else [28] * 16)])
    total = 0.0
    for row0, row1, col0, col1, branch in plan.pieces:
        height, width = rows[row1] - rows[row0], cols[col1] - cols[col0]
        total += cost[branch] * (height + 2 * context) * (width + 2 * context) + overhead
    return total


def test_pieces_cover_every_image_cell_once_on_its_branch_or_a_harder_one():
    rng = np.random.default_rng(1)
    cost, context = [0.4, 0.7, 1.0], 6
    for trial in range(300):
        exact = bool(trial % 4 == 1)
        shapes = Shapes(
            band_rows=int(rng.choice([1, 2, 4])), big_cols=4, small=(1, 2), chunk_cols=8, exact=exact
        )
        grid = rng.integers(0, 3, (shapes.band_rows, shapes.chunk_cols))
        if trial % 2:  # large same-class areas, as photos have
            grid = (grid > 1).astype(int) * 2
        if trial % 3 == 0:  # past the image's right or bottom edge
            grid[:, rng.integers(1, 9) :] = VIRTUAL
            grid[rng.integers(1, shapes.band_rows + 1) :] = VIRTUAL
        plan = plan_chunk(grid, cost, context, shapes)
        assert (_cover(plan, grid)[grid != VIRTUAL] == 1).all()
        sizes = {(r1 - r0, c1 - c0) for r0, r1, c0, c1, _ in plan.pieces}
        if not exact:  # two shapes only
            assert sizes <= {(shapes.band_rows, 4), (1, 2)}
        ran = plan.classes
        assert (ran[grid != VIRTUAL] >= grid[grid != VIRTUAL]).all() and (
            ran[grid == VIRTUAL] == VIRTUAL
        ).all()
    # one class everywhere: the largest pieces only
    assert len(plan_chunk(np.zeros((4, 16), int), cost, context, Shapes()).pieces) == 2
    assert len(plan_chunk(np.zeros((4, 16), int), cost, context, Shapes(exact=True)).pieces) == 2


def _segmentations(length: int, widths):
    """Every way to cut `length` columns into consecutive segments of the given widths."""
    if length == 0:
        yield []
        return
    for width in widths:
        if width <= length:
            for rest in _segmentations(length - width, widths):
                yield [width, *rest]


def _row_cuts(length: int, heights):
    yield from _segmentations(length, heights)


def test_pieces_are_the_cheapest_layout_of_column_segments_then_row_ranges():
    """Brute force over every cut of the columns into allowed widths and of each segment's rows into the
    heights allowed for that width: fixed shapes (two), and exact ones (any size, cut at the image edge)."""
    rng = np.random.default_rng(2)
    cost, context = [0.4, 0.7, 1.0], 4
    for exact in (False, True):
        shapes = Shapes(
            band_rows=2, big_cols=4, small=(1, 2), chunk_cols=8, exact=exact, piece_overhead=300.0
        )
        allowed = shapes.heights_by_width()
        for _ in range(25):
            grid = rng.integers(0, 3, (2, 8))
            row_px = [28, int(rng.integers(5, 29))] if exact else [28, 28]
            col_px = [28] * 6 + ([int(rng.integers(1, 29)), 28] if exact else [28, 28])
            best = np.inf
            for segments in _segmentations(8, sorted(allowed)):
                total, c0 = 0.0, 0
                for width in segments:
                    options = []
                    for cut in _row_cuts(2, allowed[width]):
                        edges = np.cumsum([0, *cut])
                        pieces = [
                            (a, b, c0, c0 + width, grid[a:b, c0 : c0 + width].max())
                            for a, b in zip(edges[:-1], edges[1:], strict=True)
                        ]
                        fake = type("Plan", (), {"pieces": pieces})
                        options.append(_plan_cost(fake, cost, context, 300.0, row_px, col_px))
                    total, c0 = total + min(options), c0 + width
                best = min(best, total)
            plan = plan_chunk(grid, cost, context, shapes, row_px, col_px)
            assert _plan_cost(plan, cost, context, 300.0, row_px, col_px) == pytest.approx(best)
    with pytest.raises(ValueError, match="cannot cover"):
        plan_chunk(
            np.zeros((1, 3), int), cost, context, Shapes(band_rows=1, big_cols=2, small=(1, 2), chunk_cols=2)
        )


def test_an_image_narrower_than_a_chunk_gets_a_chunk_as_wide_as_itself_with_the_same_pieces():
    """A CPU's engine fits one chunk to an image narrower than its chunks (`_fit_shapes`): the planner
    then covers the image's cells with the pieces it chose when the columns past the image were there."""
    from classsr_cli.engine.regions import _fit_shapes

    wide = Shapes(band_rows=4, big_cols=8, small=(1, 2), chunk_cols=32, exact=True, piece_overhead=3e7)
    fitted = _fit_shapes(wide, 480, 480 * 12, np.uint8, 4)
    assert (fitted.chunk_cols, fitted.big_cols) == (18, 8)
    assert _fit_shapes(wide, 1920, 1920 * 12, np.uint8, 4).chunk_cols == 32  # wider: chunks as they are
    assert _fit_shapes(wide, 100, 1200, np.uint8, 4).big_cols == 4  # 4 cells
    assert _fit_shapes(replace(wide, exact=False), 480, 480 * 12, np.uint8, 4).chunk_cols == 32
    rng = np.random.default_rng(4)
    cost = [0.44, 0.72, 1.0]
    for trial in range(300):
        rows, width = int(rng.choice([1, 2, 4])), int(rng.integers(1, 32 * 28))
        shapes = replace(wide, band_rows=rows)
        narrow = _fit_shapes(shapes, width, width * 12, np.uint8, 4)
        cells = -(-width // 28)
        grid = np.full((rows, 32), VIRTUAL)
        grid[:, :cells] = rng.integers(0, 3, (rows, cells))
        if trial % 2:  # large same-class areas, as photos have
            grid[:, :cells] = (grid[:, :cells] > 1) * 2
        col_px = np.clip(width - 28 * np.arange(32), 0, 28)
        cols = narrow.chunk_cols
        in_wide = plan_chunk(grid, cost, 6, shapes, None, col_px)
        in_narrow = plan_chunk(grid[:, :cols], cost, 6, narrow, None, col_px[:cols])
        assert np.array_equal(in_wide.pieces, in_narrow.pieces), trial


def test_without_promotion_every_piece_keeps_one_class():
    rng = np.random.default_rng(3)
    for shapes in (Shapes(small=(1, 1)), Shapes(exact=True)):
        for _ in range(30):
            grid = (rng.random((4, 16)) > 0.7).astype(int) * 2
            plan = plan_chunk(grid, [0.4, 0.7, 1.0], 6, shapes, promote=False)
            assert (_cover(plan, grid) == 1).all()
            assert (plan.classes == grid).all()


def test_a_lone_easy_cell_runs_on_its_neighbours_branch_but_easy_areas_stay_easy():
    grid = np.full((4, 16), 2)
    grid[1, 5] = 0  # one sky cell among rock: its own piece would cost its context and split the rock
    grid[:, 8:] = 0  # a wide stretch of sky
    for shapes in (Shapes(), Shapes(exact=True)):
        plan = plan_chunk(grid, [0.4, 0.7, 1.0], 6, shapes)
        assert plan.classes[1, 5] == 2 and (plan.classes[:, 8:] == 0).all()


def test_cross_fade_weights_are_applied_in_place_on_the_strips_that_fade():
    from classsr_cli.engine.regions import _fade_

    fade, scale = 2, 4
    for height, width in [(116, 228), (36, 64), (20, 12)]:  # the last too small to have an inside
        y = ramps(height // scale - 2 * fade, fade, scale, "cpu")
        x = ramps(width // scale - 2 * fade, fade, scale, "cpu")
        codes_y, codes_x = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 0, 2, 1])
        pieces = torch.rand(4, height, width, 3)
        expected = pieces * y[codes_y][:, :, None, None] * x[codes_x][:, None, :, None]
        _fade_(pieces, y[codes_y], x[codes_x], 2 * fade * scale)
        assert (pieces - expected).abs().max() < 1e-6


def test_each_cell_takes_the_class_of_the_sub_image_it_lies_in():
    for length in [5, 28, 31, 32, 60, 88, 100, 112, 113, 116, 400]:
        tiles, on_grid, starts = Geometry(length, length, Shapes()).rows
        for cell, tile in enumerate(tiles):
            first, last = cell * 28, min(cell * 28 + 28, length)
            assert starts[tile] <= first and last <= starts[tile] + 32, (length, cell)
            assert on_grid[cell] == (starts[tile] == 28 * tile)


def test_the_class_module_over_chunks_scores_each_sub_image_as_if_alone(shipped):
    """Per chunk, the Class-Module's features averaged over each sub-image's window are the sub-image's own;
    sub-images off the grid (aligned to the right and bottom edges) run alone. Every cell gets the class of
    the sub-image it lies in, whatever the sizes of the image and the chunks (small here: many of them)."""
    from classsr_cli.engine.regions import RegionStream
    from classsr_cli.engine.upscaler import Layout, _MirroredRows

    shapes = Shapes(band_rows=2, big_cols=2, small=(1, 1), chunk_cols=2)
    engine = Upscaler(shipped["classsr-fsrcnn.safetensors"], "cpu", shapes=shapes)
    rng = np.random.default_rng(0)
    for height, width in [(200, 300), (116, 150), (32, 32), (61, 45), (20, 90)]:
        lr = rng.random((height, width, 3), dtype=np.float32)
        stream = RegionStream(engine, height, width, Layout(), engine.new_tally(), None, None)
        source = _MirroredRows(
            [(0, lr)], height, width, 3, stream.margin, stream.band_w - stream.margin - width
        )
        padded = np.pad(lr, ((0, max(0, 32 - height)), (0, max(0, 32 - width)), (0, 0)), mode="symmetric")
        geometry = stream.geometry
        tiles = torch.from_numpy(padded).permute(2, 0, 1)
        for band in range(geometry.bands):
            rows = source.rows(*stream.band_span(band))
            rgb = torch.from_numpy(rows).contiguous()
            classes = stream.router.classes(band, rgb)
            cell0, stop = geometry.band_cells(band)
            for i in range(stop - cell0):
                for j in range(geometry.cell_cols):
                    y = geometry.row_starts[geometry.rows[0][cell0 + i]]
                    x = geometry.col_starts[geometry.cols[0][j]]
                    with torch.no_grad():
                        alone = engine.classifier(tiles[None, :, y : y + 32, x : x + 32]).argmax()
                    assert classes[i, j] == alone, (height, width, band, i, j)
            assert (classes[stop - cell0 :] == VIRTUAL).all() and (
                classes[:, geometry.cell_cols :] == VIRTUAL
            ).all()


def test_cross_fades_of_any_partition_into_pieces_sum_to_one():
    """Each piece's weight is the product of its two ramps; over a partition of the image into rectangles
    (with T-junctions, as pieces of two heights make) they sum to 1 at every pixel, edges included."""
    scale, fade = 4, 2
    rows_ramps, cols_ramps = {}, {}
    total = torch.zeros((4 * 28 + 2 * fade) * scale, (6 * 28 + 2 * fade) * scale, dtype=torch.float64)
    # a 4 x 6 cell image: a big 4x2 piece, then 1x2 strips, then a 2x2 and two 1x2
    pieces = [
        (0, 0, 4, 2),
        (0, 2, 1, 2),
        (1, 2, 1, 2),
        (2, 2, 1, 2),
        (3, 2, 1, 2),
        (0, 4, 2, 2),
        (2, 4, 1, 2),
        (3, 4, 1, 2),
    ]
    for row, col, height, width in pieces:
        ry = rows_ramps.setdefault(height, ramps(height * 28, fade, scale, "cpu", torch.float64))
        rx = cols_ramps.setdefault(width, ramps(width * 28, fade, scale, "cpu", torch.float64))
        weight = (
            ry[ramp_code(row == 0, row + height >= 4)][:, None] * rx[ramp_code(col == 0, col + width >= 6)]
        )
        y, x = row * 28 * scale, col * 28 * scale
        total[y : y + weight.shape[0], x : x + weight.shape[1]] += weight
    inside = total[fade * scale : -fade * scale, fade * scale : -fade * scale]
    assert torch.allclose(inside, torch.ones_like(inside))
    assert (ramps(84, fade, scale, "cpu")[ZERO_RAMP] == 0).all()


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
    # in place, as the engine runs it: the same output, in the output's own memory
    own = sr.clone(memory_format=torch.channels_last)  # a copy: sr may be channels-last already
    assert back_project(own, lr, 4, inplace=True) is own
    assert (own - back_project(sr, lr, 4)).abs().max() < 1e-12


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
    grey = [(17, 17, 17), (128, 128, 128), (250, 250, 250)]
    for color in [(40, 90, 200), *grey, (0, 0, 0), (255, 255, 255), (200, 30, 30)]:
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
    # measured: 0.16 (SRResNet-O, ClassSR-SRResNet), 0.95 (FSRCNN-O) to 2.03 (ClassSR-CARN-M) levels at
    # worst, 0 for the denoisers; 4.4 and 4.6 for the ClassSR models of FSRCNN and CARN-M before the
    # smooth-field fine-tunes, 2.4 for ClassSR-FSRCNN with 4 pixels of context.
    # ClassSR-CARN-M's branches run everywhere give 2.03, 2.03 and 1.78: which one a gradient meets is routing
    assert worst <= 2.1


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
    # overlapping 32x32 tiles run every tile's pixels
    assert paper_tally.executed_ratio(paper.plan) == pytest.approx(
        paper_tally.tiles * 32 * 32 / lr[..., 0].size
    )
    # regions run their pieces with `context` pixels around: big pieces of 4 x 8 cells on the sample's
    # 13 x 18 cells, the last columns and row in small pieces (1 x 2 cells), each with its context
    region = Upscaler(network, "cpu", piece_rows=4)
    _, tally = region.upscale_array(lr)
    big = (4 * 28 + 2 * region.context) * (8 * 28 + 2 * region.context) / (4 * 28 * 8 * 28)
    assert big < tally.executed_ratio(region.plan) < big * 1.2


def test_region_tiling_refuses_unknown_modes():
    from classsr_cli.errors import ModelError

    model = create("fsrcnn", widths=[4, 8, 12])
    with pytest.raises(ModelError, match="tiling"):
        Upscaler(model, "cpu", tiling="grid")
    with pytest.raises(ModelError, match="back-projection"):
        Upscaler(model, "cpu", tiling="paper", back_projection=True)


def test_taller_pieces_as_on_a_gpu_give_the_same_picture(shipped):
    # one branch for every sub-image: with the Class-Module, other piece shapes may also move sub-images to
    # a harder branch (plan_chunk), which changes the picture for a reason of its own
    lr = read_image(SAMPLE)[:120, :160].astype(np.float32)
    model = shipped["classsr-fsrcnn.safetensors"]
    short, short_tally = Upscaler(model, "cpu", branch=2, piece_rows=1).upscale_array(lr)
    tall, tall_tally = Upscaler(model, "cpu", branch=2, piece_rows=4).upscale_array(lr)
    assert short_tally.class_counts == tall_tally.class_counts
    assert tall_tally.executed_flops < short_tally.executed_flops  # fewer context margins
    assert np.abs(short - tall).max() < 2 / 255
    assert 10 * np.log10(1 / np.mean((short - tall) ** 2)) > 60


def test_many_small_chunks_and_bands_give_the_picture_of_one(shipped, monkeypatch):
    """Seams between chunks and bands are carried over exactly: tiny chunks and bands, and so few output
    canvases that pieces must run before their batches fill, give the picture of one chunk."""
    from classsr_cli.engine import workspace

    lr = read_image(SAMPLE)[:150, :190].astype(np.float32)
    model = shipped["classsr-fsrcnn.safetensors"]
    one = Shapes(band_rows=8, big_cols=8, small=(1, 1), chunk_cols=8, exact=True)
    whole, whole_tally = Upscaler(model, "cpu", branch=3, shapes=one).upscale_array(lr)
    monkeypatch.setattr(workspace, "MIN_CANVAS_SLOTS", 2)
    tiny = Shapes(
        band_rows=1, big_cols=2, small=(1, 1), chunk_cols=2, batch_pixels=10**6, exact=True, canvas_bytes=0
    )
    pieces, tally = Upscaler(model, "cpu", branch=3, shapes=tiny).upscale_array(lr)
    assert tally.class_counts == whole_tally.class_counts
    assert np.abs(pieces - whole).max() < 2 / 255
    assert 10 * np.log10(1 / np.mean((pieces - whole) ** 2)) > 60


def test_every_branch_sees_two_input_shapes_and_a_gpu_layout_fixed_batches(shipped):
    """Whatever the image's size, a branch runs big and small pieces only; in a GPU's layout (tails padded)
    every call holds a full batch, so images of any size bring no new shape."""
    model = shipped["classsr-carn.safetensors"]
    shapes = Shapes(band_rows=4, batch_pixels=4 * 36 * 64)
    engine = Upscaler(model, "cpu", shapes=shapes)
    seen: set[tuple[int, ...]] = set()
    for branch in engine.branches:
        branch.register_forward_hook(lambda module, inputs, output: seen.add(tuple(inputs[0].shape)))
    image = read_image(SAMPLE).astype(np.float32)
    cpu_engine = Upscaler(model, "cpu")
    for height, width in [(120, 160), (97, 133), (61, 45), (7, 5)]:
        lr = image[:height, :width]
        as_on_gpu, _ = engine.upscale_array(lr)
        on_cpu, _ = cpu_engine.upscale_array(lr)
        # the layouts differ (bands of 4 cell rows against 1), so a few cells run on other branches
        if min(height, width) > 32:
            assert 10 * np.log10(1 / (np.mean((on_cpu - as_on_gpu) ** 2) + 1e-20)) > 50, (height, width)
    big = (4 * 28 + 2 * engine.context, 8 * 28 + 2 * engine.context)
    small = (28 + 2 * engine.context, 2 * 28 + 2 * engine.context)
    assert {shape[2:] for shape in seen} <= {big, small}
    # full batches, and tails as batches of powers of two (all warmed up on first use)
    capacity = max(shapes.per_batch(4 * 28, 8 * 28, engine.context), shapes.per_batch(28, 56, engine.context))
    assert all(b == capacity or (b & (b - 1) == 0 and b <= capacity) for b, *_ in seen), seen


def test_very_wide_images_get_lower_bands_and_the_same_picture(shipped, monkeypatch):
    """A band's output rows are held whole until they leave: where they would pass OUTPUT_BAND_BYTES (a
    panorama), a CPU's engine cuts lower bands for that image; the picture does not change."""
    from classsr_cli.engine import regions

    lr = read_image(SAMPLE)[:120, :400].astype(np.float32)
    model = shipped["fsrcnn-o.safetensors"]
    engine = Upscaler(model, "cpu", piece_rows=4)
    tall, _ = engine.upscale_array(lr)
    heights = []
    original = regions.RegionStream._start_band

    def start_band(self, band, lr_band):
        heights.append(self.shapes.band_rows)
        return original(self, band, lr_band)

    monkeypatch.setattr(regions.RegionStream, "_start_band", start_band)
    monkeypatch.setattr(regions, "OUTPUT_BAND_BYTES", 2 * 400 * 4 * 3 * 4 * 28 * 4)  # two cell rows of output
    low, _ = engine.upscale_array(lr)
    assert set(heights) == {2}
    assert np.abs(low - tall).max() < 2 / 255 and 10 * np.log10(1 / np.mean((low - tall) ** 2)) > 60
