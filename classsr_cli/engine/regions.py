"""Region execution: the paper's per-sub-image decisions, run as larger regions with real context.

The Class-Module still decides per 32x32 LR sub-image on the paper's grid (stride 28). Each sub-image owns
a *cell*, the part of the image nearer to its centre than to its neighbours' (28x28 inside the image).
Neighbouring cells are run together as one rectangular *piece* on one branch, and every piece is run with
`context` pixels of the real image around it (mirrored at the image edge) instead of the zero padding
an isolated tile sees. A piece may take in a few cells of easier classes where running them on the
harder branch costs less than the context and the call of a piece of their own (`plan_pieces_by_cost`).
Where pieces meet, their outputs are cross-faded over a few pixels so that no seam shows between branches.
The result equals running the branch on the whole image wherever the context covers the network's reach
(4 LR pixels are enough for the shipped families: see the README).
"""

from dataclasses import dataclass

import numpy as np

from classsr_cli.engine.tiling import PATCH

# Pieces are at most this many cells wide (plan_pieces cuts wider runs into power-of-two widths, 8, 4, 2, 1
# cells, so that pieces fall into a few shapes and batch well) and this many cells tall.
MAX_PIECE_CELLS = 8
MAX_PIECE_ROWS = 8


def cell_bounds(length: int, starts: list[int], patch: int = PATCH) -> list[int]:
    """Boundaries of the cells owned by tiles at `starts` along an axis of `length` pixels.

    Cell i is [bounds[i], bounds[i + 1]): overlapping tiles split their overlap in the middle, the first and
    last cells reach the image edges. For the regular grid every inner cell is 28 pixels long.
    """
    inner = [(previous + patch + start) // 2 for previous, start in zip(starts[:-1], starts[1:], strict=True)]
    return [0, *[min(max(b, 0), length) for b in inner], length]


@dataclass(frozen=True)
class Piece:
    """A rectangle of cells of one class: rows [row0, row1) and columns [col0, col1) of the band's grid."""

    row0: int
    row1: int
    col0: int
    col1: int
    branch: int


def _power_of_two_widths(length: int, largest: int) -> list[int]:
    widths = []
    while length > 0:
        width = min(largest, 1 << (length.bit_length() - 1))
        widths.append(width)
        length -= width
    return widths


def plan_pieces(
    classes: np.ndarray, max_cells: int = MAX_PIECE_CELLS, max_rows: int = MAX_PIECE_ROWS
) -> list[Piece]:
    """Cover a (rows, cols) grid of cell classes with rectangles of one class each.

    Each row is cut into runs of one class, each run into power-of-two widths of at most `max_cells`;
    identical pieces in consecutive rows are stacked into one taller piece of at most `max_rows` cells.
    Every cell is covered exactly once.
    """
    classes = np.asarray(classes)
    open_pieces: dict[tuple[int, int, int], int] = {}  # (col0, col1, branch) -> row0, for the row above
    pieces: list[Piece] = []
    for row in range(classes.shape[0]):
        current: dict[tuple[int, int, int], int] = {}
        values = classes[row]
        col = 0
        while col < values.size:
            end = col
            while end < values.size and values[end] == values[col]:
                end += 1
            for width in _power_of_two_widths(end - col, max_cells):
                key = (col, col + width, int(values[col]))
                row0 = open_pieces.pop(key, row)
                if row - row0 == max_rows:  # tall enough: close it and start another
                    pieces.append(Piece(row0, row, *key))
                    row0 = row
                current[key] = row0
                col += width
        for (col0, col1, branch), row0 in open_pieces.items():  # not continued in this row: closed
            pieces.append(Piece(row0, row, col0, col1, branch))
        open_pieces = current
    for (col0, col1, branch), row0 in open_pieces.items():
        pieces.append(Piece(row0, classes.shape[0], col0, col1, branch))
    return pieces


def plan_pieces_by_cost(
    classes: np.ndarray,
    row_sizes: list[int],
    col_sizes: list[int],
    cost: list[float],
    context: int,
    piece_overhead: float = 0.0,
    max_rows: int = MAX_PIECE_ROWS,
    widths: tuple[int, ...] = tuple(range(1, MAX_PIECE_CELLS + 1)),
) -> list[Piece]:
    """Cover a (rows, cols) grid of cell classes with rectangles, each run on one branch, at a low cost.

    A cell of class c may run on any branch k >= c, a wider one, so a piece runs on the hardest class it
    covers. (Wider usually means as good or better: PSNR held or rose for ClassSR-FSRCNN and -CARN; it fell
    0.04 dB for ClassSR-DnCNN, whose narrow branches were trained further on their own classes.)
    A piece of h x w LR pixels on branch k costs `cost[k] * (h + 2 context) * (w + 2 context) +
    piece_overhead`: its pixels with their context, plus what one more call costs (any unit, the same
    for both). `row_sizes` and `col_sizes` give the cells' sizes in LR pixels. The grid is cut into strips
    of `max_rows` rows; within a strip, a dynamic programme finds the cheapest layout of one shape: the
    strip cut into column segments `widths` cells wide, each segment cut into row ranges. Layouts whose
    column cuts differ from row to row are not searched, so with strips of several rows another layout
    may cost less; with one-row strips (CARN-M on a CPU) the search is exhaustive.
    Every cell is covered exactly once. A ValueError if `widths` cannot cover the columns.
    """
    classes = np.asarray(classes)
    cost = np.asarray(cost, dtype=np.float64)
    col_edges = np.concatenate([[0], np.cumsum(col_sizes)])
    cols = classes.shape[1]
    pieces: list[Piece] = []
    for top in range(0, classes.shape[0], max_rows):
        strip = classes[top : top + max_rows]
        height = strip.shape[0]
        row_edges = np.concatenate([[0], np.cumsum(row_sizes[top : top + height])])
        spans = [(r0, r1) for r1 in range(1, height + 1) for r0 in range(r1)]
        column_max = {span: strip[span[0] : span[1]].max(axis=0) for span in spans}
        window = dict(column_max)  # the hardest class of the rows `span` in `width` columns from each start
        segment_cost, row_choice = {}, {}  # width -> cost of the best row cut at each start column
        for width in range(1, min(max(widths), cols) + 1):
            if width > 1:
                window = {
                    span: np.maximum(m[:-1], column_max[span][width - 1 :]) for span, m in window.items()
                }
            if width not in widths:
                continue
            padded_w = col_edges[width:] - col_edges[:-width] + 2 * context
            best, choice = [np.zeros(padded_w.size)], [None]
            for r1 in range(1, height + 1):
                options = [
                    best[r0]
                    + cost[window[(r0, r1)]] * (row_edges[r1] - row_edges[r0] + 2 * context) * padded_w
                    + piece_overhead
                    for r0 in range(r1)
                ]
                best.append(np.min(options, axis=0))
                choice.append(np.argmin(options, axis=0))
            segment_cost[width], row_choice[width] = best[height], choice
        total = np.full(cols + 1, np.inf)
        total[0] = 0.0
        last_width = np.zeros(cols + 1, dtype=np.int64)
        for stop in range(1, cols + 1):
            for width in segment_cost:
                if width <= stop and total[stop - width] + segment_cost[width][stop - width] < total[stop]:
                    total[stop] = total[stop - width] + segment_cost[width][stop - width]
                    last_width[stop] = width
        if not np.isfinite(total[cols]):
            raise ValueError(f"piece widths {widths} cannot cover {cols} columns")
        stop = cols
        while stop > 0:
            width = int(last_width[stop])
            start, r1 = stop - width, height
            while r1 > 0:
                r0 = int(row_choice[width][r1][start])
                branch = int(strip[r0:r1, start:stop].max())
                pieces.append(Piece(top + r0, top + r1, start, stop, branch))
                r1 = r0
            stop = start
    return pieces


def blend_ramp(start: int, stop: int, lo: int, hi: int, fade: int, scale: int) -> np.ndarray:
    """Cross-fade weights along one axis for a piece owning LR pixels [start, stop), in output pixels.

    The weights cover output pixels [(start - fade) * scale, (stop + fade) * scale), rising linearly from 0
    to 1 across each boundary (2 * fade LR pixels wide, centred on it), except at the image edges `lo` and
    `hi`, where nothing lies beyond and the weight stays 1. Overlapping pieces' weights sum to 1 on a
    straight boundary; the stitcher divides by the sum anyway.
    """
    first, last = (start - fade) * scale, (stop + fade) * scale
    centres = np.arange(first, last, dtype=np.float64) + 0.5
    width = 2 * fade * scale
    if width == 0:
        return np.ones(last - first, dtype=np.float32)
    rise = np.ones_like(centres) if start <= lo else np.clip((centres - first) / width, 0, 1)
    fall = np.ones_like(centres) if stop >= hi else np.clip((last - centres) / width, 0, 1)
    return np.minimum(rise, fall).astype(np.float32)
