"""Work units of the region engine: the cell lattice, bands, chunks, piece shapes and their planning.

The image is cut into *cells* of 28x28 LR pixels on a lattice aligned to its top-left corner (the last row
and column of cells may reach past its edges). Cell (i, j) lies inside the paper's 32x32 sub-image at
(28 i, 28 j), or, past the last sub-image on that grid, inside the last one (aligned to the image edge), so
each cell takes the class of the sub-image it lies in: the decision stays the paper's, per sub-image.

Cells are grouped into *bands* of `band_rows` cell rows, and each band into *chunks* of `chunk_cols` cell
columns; every chunk has the same size on every image (cells past the image edges see mirrored pixels and
run nothing), so the Class-Module's pass over a chunk and the chunk's output canvas have fixed shapes. In a
chunk, cells are covered by rectangular *pieces* of cells, each run with `context` LR pixels of real image
around it; a piece runs on the hardest class among its cells (a harder branch is as good or better), and
`plan_chunk` picks the layout of least cost.

Which pieces are allowed is what differs by device (`Shapes`):
- fixed shapes (a GPU): two per branch, big ones (the band's height by `big_cols` cells) and small ones;
  pieces are whole cells even past the image's edge, and batches have a fixed size, so a branch sees the
  same two input shapes on every image, and each batch can be captured once as a CUDA graph;
- exact shapes (a CPU, where a new shape costs nothing to set up and padding would cost arithmetic): any
  rectangle up to the band's height and `big_cols` wide, cut at the image's edges, and each call's batch
  as large as its pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from classsr_cli.engine.tiling import PATCH, STRIDE, padded_size, tile_starts

CELL = STRIDE  # LR pixels per cell side
VIRTUAL = -1  # a cell wholly past the image's edge


@dataclass(frozen=True)
class Shapes:
    """The sizes of one engine, in cells (LR pixels are 28 per cell)."""

    band_rows: int = 4  # cell rows per band: the tallest piece
    big_cols: int = 8  # cell columns of the widest piece
    small: tuple[int, int] = (1, 2)  # fixed shapes: cell rows and columns of the small pieces
    chunk_cols: int = 16  # cell columns per chunk
    batch_pixels: int = 65536  # LR pixels (context included) per branch call; sets pieces per batch
    # exact: pieces of any size up to band_rows x big_cols, cut at the image's edges, each batch as long as
    # its pieces (a CPU); fixed: the two shapes, whole cells, full batches (a GPU)
    exact: bool = False
    # what one more piece costs beyond its pixels, in FLOPs of the same speed (planning only)
    piece_overhead: float = 0.0
    # output canvases kept at once (a chunk's lives until its pieces have all run): as many as fit in this
    # many bytes, and at least two; more let batches fill across more chunks before they must run
    canvas_bytes: int = 512 * 2**20

    def __post_init__(self):
        rows, cols = self.small
        if self.band_rows % rows or self.big_cols % cols or self.chunk_cols % cols:
            raise ValueError(
                f"small pieces {self.small} must divide the band {self.band_rows} rows and "
                f"the big pieces' and chunks' columns ({self.big_cols}, {self.chunk_cols})"
            )
        if self.chunk_cols < self.big_cols:
            raise ValueError("a chunk must hold a big piece")

    def heights_by_width(self) -> dict[int, tuple[int, ...]]:
        """Allowed piece heights for each allowed width, in cells."""
        if self.exact:
            return {width: tuple(range(1, self.band_rows + 1)) for width in range(1, self.big_cols + 1)}
        rows, cols = self.small
        return (
            {self.big_cols: (self.band_rows,), cols: (rows,)}
            if cols != self.big_cols
            else {cols: tuple(sorted({rows, self.band_rows}))}
        )

    def per_batch(self, height: int, width: int, context: int) -> int:
        """Pieces of height x width LR pixels per batch: as many as fill `batch_pixels` (at least one)."""
        return max(1, self.batch_pixels // ((height + 2 * context) * (width + 2 * context)))


def cell_count(length: int) -> int:
    """Cells along an axis of `length` LR pixels (the last may reach past the edge; at least one)."""
    return max(1, -(-length // CELL))


def _axis_sources(length: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """For the cells along one axis of `length` LR pixels: which sub-image each lies in.

    Returns (tile index per cell, whether that tile is on the 28-pixel grid, the tiles' starts).
    """
    starts = tile_starts(padded_size(length))
    tiles = np.minimum(np.arange(cell_count(length)), len(starts) - 1)
    on_grid = np.array([(starts[t] % STRIDE == 0) and starts[t] == STRIDE * t for t in tiles])
    return tiles, on_grid, starts


@dataclass(frozen=True)
class Geometry:
    """How an image of height x width LR pixels is cut into cells, bands and chunks."""

    height: int
    width: int
    shapes: Shapes

    @cached_property
    def rows(self):
        return _axis_sources(self.height)

    @cached_property
    def cols(self):
        return _axis_sources(self.width)

    @property
    def cell_rows(self) -> int:
        return len(self.rows[0])

    @property
    def cell_cols(self) -> int:
        return len(self.cols[0])

    @property
    def bands(self) -> int:
        return -(-self.cell_rows // self.shapes.band_rows)

    @property
    def chunks_per_band(self) -> int:
        return -(-self.cell_cols // self.shapes.chunk_cols)

    @property
    def row_starts(self) -> list[int]:
        return self.rows[2]

    @property
    def col_starts(self) -> list[int]:
        return self.cols[2]

    def band_cells(self, band: int) -> tuple[int, int]:
        """The band's first cell row and its end (exclusive, within the image's cells)."""
        first = band * self.shapes.band_rows
        return first, min(first + self.shapes.band_rows, self.cell_rows)

    def band_tiles(self, band: int) -> list[int]:
        """The tile rows whose first cell lies in this band (each tile is counted in one band)."""
        first, stop = self.band_cells(band)
        tiles = self.rows[0]
        return sorted({int(t) for t in tiles[first:stop] if np.flatnonzero(tiles == t)[0] >= first})


def cell_sources(geometry: Geometry, band: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Where each cell of a band takes its logits from, as indices into [grid logits, off-grid logits].

    The grid logits are the Class-Module's over the band's chunks: (band_rows, chunks * chunk_cols) values,
    row-major; cell (i, j) of the band has its own window there when its sub-image is on the grid. The other
    cells lie in a sub-image aligned to the image edge (off the grid), listed once each as (tile row, tile
    column) in the second return value; their logits follow the grid's. Cells past the band's last image
    row repeat it (they are virtual).
    """
    shapes = geometry.shapes
    first, stop = geometry.band_cells(band)
    width = geometry.chunks_per_band * shapes.chunk_cols
    row_tiles, row_grid, _ = geometry.rows
    col_tiles, col_grid, _ = geometry.cols
    index = np.zeros((shapes.band_rows, width), dtype=np.int64)
    off_grid: dict[tuple[int, int], int] = {}
    grid_size = shapes.band_rows * width
    for i in range(shapes.band_rows):
        cell_row = min(first + i, stop - 1)
        tile_row = int(row_tiles[cell_row])
        for j in range(width):
            cell_col = min(j, geometry.cell_cols - 1)
            tile_col = int(col_tiles[cell_col])
            # the chunks' pass covers the windows of this band's cell rows only: a last cell whose sub-image
            # starts in the band above runs alone, as the off-grid ones do
            if row_grid[cell_row] and col_grid[cell_col] and tile_row >= first:
                index[i, j] = (tile_row - first) * width + tile_col
            else:
                key = (tile_row, tile_col)
                if key not in off_grid:
                    off_grid[key] = len(off_grid)
                index[i, j] = grid_size + off_grid[key]
    return index, list(off_grid)


@dataclass
class ChunkPlan:
    """The pieces of one chunk, as (row0, row1, col0, col1, branch) rows of cells (rows within the band,
    columns within the chunk), and the branch each cell runs on (VIRTUAL past the image)."""

    pieces: np.ndarray  # (n, 5) int64
    classes: np.ndarray  # (band_rows, chunk_cols)


def plan_chunk(
    classes: np.ndarray,
    cost: list[float],
    context: int,
    shapes: Shapes,
    row_px: np.ndarray | None = None,
    col_px: np.ndarray | None = None,
    promote: bool = True,
) -> ChunkPlan:
    """Cover a chunk's cells with pieces at the least cost.

    `classes` (rows, cols): each cell's class (0 = simple), VIRTUAL for cells past the image. `cost`: each
    branch's executed FLOPs per LR pixel. `row_px` and `col_px`: the LR pixels of each cell row and column
    that a piece computes (28, or less at the image's edge with exact shapes; default 28). A piece of h x w
    LR pixels on branch k costs cost[k] * (h + 2 context) * (w + 2 context) + shapes.piece_overhead;
    one of virtual cells alone is not run and costs nothing. The chunk's columns are cut into
    segments of the allowed widths, each segment into row ranges of the heights allowed for its width; a
    dynamic programme finds the cheapest such layout (exhaustive within it). A piece runs on the hardest
    class among its cells; with `promote` False only pieces whose cells share one class are allowed (a
    FLOPs budget, where a harder branch would spend what the budget does not have; the allowed shapes must
    then include single cells). Every image cell is covered exactly once. A ValueError if the allowed
    widths cannot cover the columns.
    """
    classes = np.asarray(classes, dtype=np.int64)
    rows, cols = classes.shape
    row_px = np.full(rows, CELL) if row_px is None else np.asarray(row_px)
    col_px = np.full(cols, CELL) if col_px is None else np.asarray(col_px)
    cost = np.append(np.asarray(cost, dtype=np.float64), 0.0)  # index VIRTUAL (-1): nothing to run
    row_edges = np.concatenate([[0], np.cumsum(row_px)])
    col_edges = np.concatenate([[0], np.cumsum(col_px)])
    heights_by_width = shapes.heights_by_width()
    allowed = {width: heights for width, heights in heights_by_width.items() if width <= cols}
    if not allowed:
        raise ValueError(f"pieces of widths {sorted(heights_by_width)} cannot cover {cols} columns")
    # Every candidate piece at once, in arrays over (width slot, first row, first column): the hardest and
    # easiest class among its cells, as running extremes over columns (width by width), then over rows
    # (height by height); `values[h - 1]` holds each piece's cost for h rows, inf where not allowed.
    widths = list(allowed)
    real = np.where(classes == VIRTUAL, np.iinfo(np.int64).max, classes)
    hard = np.full((len(widths), rows, cols), VIRTUAL, dtype=np.int64)
    easy = np.full((len(widths), rows, cols), VIRTUAL, dtype=np.int64)
    padded_w = np.zeros((len(widths), 1, cols), dtype=np.int64)  # 0 past the last start: never read
    top, low = classes, real
    for width in range(1, max(widths) + 1):
        if width > 1:
            top = np.maximum(top[:, :-1], classes[:, width - 1 :])
            low = np.minimum(low[:, :-1], real[:, width - 1 :])
        if width in allowed:
            slot, starts = widths.index(width), cols - width + 1
            hard[slot, :, :starts], easy[slot, :, :starts] = top, low
            padded_w[slot, 0, :starts] = col_edges[width:] - col_edges[:-width] + 2 * context
    values, hardest = [], []
    hard_row, easy_row = hard, easy  # pieces one cell row high; below, `hard` and `easy` are for `height`
    for height in range(1, rows + 1):
        if height > 1:
            hard = np.maximum(hard[:, :-1], hard_row[:, height - 1 :])
            easy = np.minimum(easy[:, :-1], easy_row[:, height - 1 :])
        area = (row_edges[height:] - row_edges[:-height] + 2 * context)[None, :, None] * padded_w
        value = np.where(hard >= 0, cost[hard] * area + shapes.piece_overhead, 0.0)
        if not promote:
            value = np.where((hard < 0) | (easy == hard), value, np.inf)
        ok = np.array([height in allowed[width] for width in widths])
        values.append(np.where(ok[:, None, None], value, np.inf))
        hardest.append(hard)
    # the cheapest cut of each column segment into row ranges: over the last row range's height
    best = [np.zeros((len(widths), cols))]
    choice = [np.zeros((len(widths), cols), dtype=np.int64)]
    for r1 in range(1, rows + 1):
        options = np.stack([best[r1 - h] + values[h - 1][:, r1 - h] for h in range(1, r1 + 1)])
        pick = np.argmin(options, axis=0)  # the first of equal options: the lowest piece
        best.append(np.take_along_axis(options, pick[None], axis=0)[0])
        choice.append(r1 - 1 - pick)
    segment_cost = best[rows].tolist()
    # the cheapest cut of the columns into segments (widths tried in the order allowed, the first kept)
    total = [0.0] + [np.inf] * cols
    last_slot = [0] * (cols + 1)  # the width slot of the segment ending there
    for stop in range(1, cols + 1):
        for slot, width in enumerate(widths):
            if width <= stop and total[stop - width] + segment_cost[slot][stop - width] < total[stop]:
                total[stop] = total[stop - width] + segment_cost[slot][stop - width]
                last_slot[stop] = slot
    if not np.isfinite(total[cols]):
        raise ValueError(f"pieces of widths {sorted(heights_by_width)} cannot cover {cols} columns")
    pieces = []
    ran = classes.copy()
    stop = cols
    while stop > 0:
        slot = last_slot[stop]
        start, r1 = stop - widths[slot], rows
        while r1 > 0:
            r0 = int(choice[r1][slot, start])
            branch = int(hardest[r1 - r0 - 1][slot, r0, start])
            if branch >= 0:
                pieces.append((r0, r1, start, stop, branch))
                ran[r0:r1, start:stop] = branch
            r1 = r0
        stop = start
    ran[classes == VIRTUAL] = VIRTUAL
    return ChunkPlan(np.asarray(pieces, dtype=np.int64).reshape(-1, 5), ran)


def ramps(length: int, fade: int, scale: int, device, dtype=torch.float32) -> torch.Tensor:
    """Cross-fade weights along one side of a piece `length` LR pixels long, in output pixels, as 5 rows:
    inside the image on both ends, at the image's first edge, at its last edge, at both, and zeros.

    A row covers (length + 2 fade) * scale output pixels: the piece's own and `fade` LR pixels beyond each
    end. Across a boundary between two pieces the weight rises linearly from 0 to 1 over 2 fade LR pixels
    centred on it, so two neighbours' weights sum to 1 there; at an image edge nothing lies beyond and it
    stays 1. Weights of a partition into rectangles, each the product of its two ramps, sum to 1
    everywhere: they are the partition's indicators blurred by the same linear kernel.
    """
    size = (length + 2 * fade) * scale
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    width = 2 * fade * scale
    rise = (centres / width).clamp(0, 1) if width else torch.ones(size, dtype=torch.float64)
    fall = ((size - centres) / width).clamp(0, 1) if width else torch.ones(size, dtype=torch.float64)
    ones = torch.ones(size, dtype=torch.float64)
    rows = [torch.minimum(rise, fall), fall, rise, ones, torch.zeros(size, dtype=torch.float64)]
    return torch.stack(rows).to(device=device, dtype=dtype)


ZERO_RAMP = 4  # the row of `ramps` that adds nothing (a batch's padding)


def ramp_code(first_edge: bool, last_edge: bool) -> int:
    return int(first_edge) + 2 * int(last_edge)


def flat_offsets(rows: int, cols: int, row_stride: int, device) -> torch.Tensor:
    """The flat indices of a rows x cols window of a row-major array `row_stride` wide, from its corner."""
    return (
        torch.arange(rows, device=device)[:, None] * row_stride + torch.arange(cols, device=device)[None, :]
    ).flatten()


__all__ = [
    "CELL",
    "PATCH",
    "VIRTUAL",
    "ZERO_RAMP",
    "ChunkPlan",
    "Geometry",
    "Shapes",
    "cell_count",
    "cell_sources",
    "flat_offsets",
    "plan_chunk",
    "ramp_code",
    "ramps",
]
