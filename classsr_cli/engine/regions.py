"""Region execution: the paper's per-sub-image decisions, run as larger regions with real context.

The Class-Module still decides per 32x32 LR sub-image on the paper's grid (stride 28). Each sub-image owns
a *cell*, the part of the image nearer to its centre than to its neighbours' (28x28 inside the image).
Neighbouring cells of one class are run together as one rectangular *piece*, and every piece is run with
`context` pixels of the real image around it (mirrored at the image edge) instead of the zero padding
an isolated tile sees. Where pieces meet, their outputs are cross-faded over a few pixels so that no seam
shows between branches. The result equals running the branch on the whole image wherever the context
covers the network's reach (4 LR pixels are enough for the shipped families: see the README).
"""

from dataclasses import dataclass

import numpy as np

from classsr_cli.engine.tiling import PATCH

# Pieces are at most this many cells wide; wider runs of one class are cut into power-of-two widths
# (8, 4, 2, 1 cells), so that pieces fall into a few shapes and batch well.
MAX_PIECE_CELLS = 8
MAX_PIECE_ROWS = 4


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


def promote_short_runs(classes: np.ndarray, cost: list[float], cell: int, context: int) -> np.ndarray:
    """Run a short stretch of cells on the branch of the harder neighbours around it when that is cheaper.

    A stretch of n cells of class c between two cells of one harder class k costs, on its own, its
    branch over n cells plus context on both sides, and it cuts the neighbours' piece in two (two more
    context margins on branch k); run on branch k it costs k's FLOPs over n cells. `cost` gives each
    branch's executed FLOPs (any unit). Quality can only rise: the stretch gets a stronger branch.
    Returns a new (rows, cols) array.
    """
    promoted = np.array(classes, copy=True)
    for row in promoted:
        edges = np.flatnonzero(np.diff(row)) + 1
        starts, stops = np.r_[0, edges], np.r_[edges, row.size]
        for index in range(1, len(starts) - 1):
            own, before, after = row[starts[index]], row[starts[index - 1]], row[stops[index]]
            if before != after or before <= own:
                continue
            length = (stops[index] - starts[index]) * cell
            alone = cost[own] * (length + 2 * context) + cost[before] * 2 * context
            if cost[before] * length < alone:
                row[starts[index] : stops[index]] = before
    return promoted


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
