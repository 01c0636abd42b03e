"""The inference engine: sub-images -> Class-Module -> per-branch batches -> stitched output, band by band.

Two ways to run the branches (`tiling`):
- "region" (default): the decision is per 32x32 sub-image, as in the paper, but each branch runs on
  rectangles of same-class cells with real neighbouring pixels as context, cross-faded where classes meet,
  then one back-projection step pulls each result to agree with its LR input (`engine/regions.py`,
  `engine/backprojection.py`). Each branch's output matches it run on the whole image (no tile grid).
- "paper": every 32x32 tile runs alone (zero padding at its edges) and overlaps are averaged uniformly,
  exactly as the official code does, to reproduce its outputs and numbers.

The image arrives as consecutive strips of rows and leaves the same way. Only one band of rows is in
memory at a time (its LR rows, its tiles, and the HR rows that later bands can still add to), so peak
memory grows with the image width, not its height. In region mode the band stays on the device.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classsr_cli.engine.backprojection import back_project, bicubic
from classsr_cli.engine.regions import (
    MAX_PIECE_CELLS,
    MAX_PIECE_ROWS,
    blend_ramp,
    cell_bounds,
    plan_pieces,
    plan_pieces_by_cost,
)
from classsr_cli.engine.routing import RoutingPlan, RoutingTally, apply_budget, plan_for
from classsr_cli.engine.runner import BatchRunner, pick_device, pick_dtype
from classsr_cli.engine.tiling import PATCH, STRIDE, coverage, padded_size, tile_starts
from classsr_cli.errors import ModelError
from classsr_cli.models.classifier import ClassModule

# A band holds at least this many batches of tiles, so each branch sees full batches even on narrow images.
BATCHES_PER_BAND = 4
TILINGS = ("region", "paper")
# LR pixels of real image around every piece. Cells run alone with 4 came within 75 dB (CARN-M) and 67 dB
# (FSRCNN) of the whole-image output, with 2 within 58 and 55 dB, with none 43 dB, on a validation photo
# (`python -m benchmarks.context_margin PHOTO`). A network that needs more says so (`engine_context`).
CONTEXT = 4
# Half-width, in LR pixels, of the cross-fade between neighbouring pieces.
FADE = 2
# Pieces one cell row tall ran fastest per output pixel on a CPU (CARN-M: 9.4 us per LR pixel at 36x232,
# 12.9 at 64x232, 14.0 at 120x232, with 2 threads: their features stay in the caches); GPUs want size.
# A network whose features are small enough says otherwise (`cpu_piece_rows`), and one that needs more
# context than CONTEXT gets PIECE_ROWS unless it says so: thin pieces would be mostly context.
PIECE_ROWS_ON_CPU = 1
# Cell rows of a piece on a GPU (and of the bands everywhere: a band holds whole pieces)
PIECE_ROWS = 4
# On a GPU every new tensor shape costs setup (cuDNN builds plans for it, autotunes where asked), and region
# pieces come in many shapes (edge cells differ in size, groups in count). There pieces are cut at fixed
# sizes, their cell counts times the stride plus this many LR pixels of the edge cells' slack (taken from
# further real or mirrored context), and batches are padded to powers of two: a few shapes, for any image.
EDGE_SLACK = 4
# What one more piece costs beyond its pixels, in FLOPs of the same speed: a call of a small piece took
# about 0.9 ms more than its pixels' share on a CPU, where FSRCNN-O ran 80 MFLOPs in 0.9 ms (on 40x40
# against 236x236 LR pixels; runs of CARN-M showed no more than that). GPUs use it too, unmeasured there.
PIECE_OVERHEAD_FLOPS = 80e6
# Piece widths in cells when shapes are fixed: a few shapes
PIECE_WIDTHS_FIXED = (1, 2, 4, 8)
# The Class-Module's features of a 32x32 tile: 8x8 positions, each from a 4x4 pixel block
FEATURE_WINDOW = 8
# Below this alpha a pixel's colour is not recovered from premultiplied values (it is all but invisible).
ALPHA_FLOOR = 1.0 / 1024


@dataclass
class Layout:
    """What the pixels of a strip are: colour channels (1 grey or 3 RGB) followed by an optional alpha."""

    color_channels: int = 3
    has_alpha: bool = False

    @property
    def channels(self) -> int:
        return self.color_channels + int(self.has_alpha)


def context_for(branches) -> int:
    """LR pixels of real image around every piece: CONTEXT, or more where a branch says it needs more."""
    return max(getattr(branch, "engine_context", CONTEXT) for branch in branches)


class Upscaler:
    """Upscale x4 (or denoise: a model of scale 1) with a ClassSR model or a single network, on one device."""

    def __init__(
        self,
        model: nn.Module,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        branch: int | None = None,
        flops_budget: float | None = None,
        tiling: str = "region",
        back_projection: bool | None = None,
        piece_rows: int | None = None,
        fixed_shapes: bool | None = None,
    ):
        if tiling not in TILINGS:
            raise ModelError(f"unknown tiling '{tiling}': use {' or '.join(TILINGS)}")
        self.tiling = tiling
        self.scale = getattr(model, "scale", 4)
        # the paper's mode reproduces the official outputs, so it adds nothing unless asked; at scale 1
        # (denoising) back-projection would return the noisy input itself
        if back_projection is None:
            back_projection = tiling == "region" and self.scale > 1
        self.back_projection = back_projection
        if self.back_projection and tiling == "paper":
            raise ModelError("back-projection needs the region tiling: the paper's tiles have no context")
        if self.back_projection and self.scale == 1:
            raise ModelError("back-projection is for upscaling: at scale 1 it would give back the input")
        self.plan: RoutingPlan = plan_for(model, branch, flops_budget)
        # real pixels around every piece: what the branches need to match their whole-image output
        self.context = context_for(self.plan.branches)
        self.device = pick_device(device)
        if piece_rows is not None and not 1 <= piece_rows <= MAX_PIECE_ROWS:
            raise ModelError(f"piece_rows must be 1 to {MAX_PIECE_ROWS}, got {piece_rows}")
        # the layout of the pieces decides which cells join a harder neighbour's piece (plan_pieces_by_cost),
        # so a CPU (piece rows of the network's choice, any width) and a GPU (4 rows, fixed widths) route a
        # few cells differently; `piece_rows` and `fixed_shapes` make two devices' outputs comparable
        cpu_default = PIECE_ROWS_ON_CPU if self.context <= CONTEXT else PIECE_ROWS
        on_cpu = max(getattr(b, "cpu_piece_rows", cpu_default) for b in self.plan.branches)
        self.piece_rows = piece_rows or (on_cpu if self.device.type == "cpu" else PIECE_ROWS)
        # None: on any device but the CPU, where exact shapes cost nothing to set up and padding would
        self.fixed_shapes = self.device.type != "cpu" if fixed_shapes is None else fixed_shapes
        self.runner = BatchRunner(
            self.device, pick_dtype(precision, self.device), batch_size, pad_batches=self.fixed_shapes
        )
        self._ramps: dict[tuple[int, bool, bool], torch.Tensor] = {}  # cross-fade weights, on the device
        self.branches = [self.runner.prepare(b) for b in self.plan.branches]
        self.classifier = self.runner.prepare(self.plan.classifier) if self.plan.classifies else None

    @property
    def num_classes(self) -> int:
        return len(self.branches)

    def new_tally(self) -> RoutingTally:
        return RoutingTally(self.num_classes)

    # -- one band of tiles ------------------------------------------------------------------------

    def _route(self, tiles: torch.Tensor, tally: RoutingTally) -> np.ndarray:
        """Classes of (N, 3, 32, 32) tiles: the Class-Module's argmax, a fixed branch, or the budget's."""
        if not self.plan.classifies:
            return np.full(tiles.shape[0], self.plan.fixed_branch, dtype=np.int64)
        return self._choose(self.runner(self.classifier, tiles, to_cpu=False), tally)

    def _choose(self, logits: torch.Tensor, tally: RoutingTally) -> np.ndarray:
        count = logits.shape[0]
        if self.plan.flops_budget is None:
            return logits.argmax(dim=1).cpu().numpy()
        logits = logits.cpu()
        # the budget is kept over all tiles so far: easy bands leave room for harder ones later
        total_tiles = tally.tiles + count
        allowance = self.plan.flops_budget * self.plan.base_flops * total_tiles
        allowance -= self.plan.classifier_flops * total_tiles + (
            tally.flops - tally.tiles * self.plan.classifier_flops
        )
        return apply_budget(torch.softmax(logits, dim=1).numpy(), self.plan, allowance)

    def _super_resolve(self, tiles: torch.Tensor, classes: np.ndarray) -> torch.Tensor:
        out = torch.empty(tiles.shape[0], 3, PATCH * self.scale, PATCH * self.scale)
        for index, branch in enumerate(self.branches):
            chosen = torch.from_numpy(np.flatnonzero(classes == index))
            if chosen.numel():
                out[chosen] = self.runner(branch, tiles[chosen])
        return out

    # -- streaming --------------------------------------------------------------------------------

    def stream(
        self,
        height: int,
        width: int,
        strips: Iterable[tuple[int, np.ndarray]],
        layout: Layout = Layout(),
        tally: RoutingTally | None = None,
        on_tiles: Callable[[int, np.ndarray, list[int], list[int]], None] | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield the output as float32 (h, scale*width, C) strips in [0, 1], top to bottom.

        `strips` yields (y0, float32 (h, width, C) array) covering the input top to bottom. `on_tiles`, if
        given, is called after each band with (tile count, classes, row starts, column starts).
        Raises ValueError if the strips end before `height` rows.
        """
        tally = tally if tally is not None else self.new_tally()
        if self.tiling == "paper":
            return self._stream_paper(height, width, strips, layout, tally, on_tiles)
        return self._stream_regions(height, width, strips, layout, tally, on_tiles)

    def _classify_band(self, lr: torch.Tensor, rows: list[int], cols: list[int], tally: RoutingTally):
        """Route the paper's 32x32 tiles at (rows x cols) of lr (C, h, w).

        Returns their classes (rows, cols) and the FLOPs the Class-Module executed for them (None: its
        FLOPs per tile, times the tiles)."""
        shape = (len(rows), len(cols))
        if self.plan.classifies and isinstance(self.classifier, ClassModule):
            logits, executed = self._band_logits(lr, rows, cols)
            return self._choose(logits, tally).reshape(shape), executed
        return self._route(self._cut_tiles(lr, rows, cols), tally).reshape(shape), None

    @staticmethod
    def _cut_tiles(lr: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
        """The 32x32 tiles of lr (C, h, w) at rows x cols, row by row: (len(rows) * len(cols), C, 32, 32)."""
        band = torch.stack([lr[:, y : y + PATCH] for y in rows])  # (R, C, 32, w)
        index = (
            torch.tensor(cols, device=lr.device)[:, None] + torch.arange(PATCH, device=lr.device)
        ).flatten()
        tiles = band.index_select(3, index).unflatten(3, (len(cols), PATCH))  # (R, C, 32, N, 32)
        return tiles.permute(0, 3, 1, 2, 4).reshape(len(rows) * len(cols), lr.shape[0], PATCH, PATCH)

    def _band_logits(self, lr: torch.Tensor, rows: list[int], cols: list[int]) -> tuple[torch.Tensor, int]:
        """The Class-Module's logits (len(rows) * len(cols), M) for the tiles of lr (C, h, w) at rows x cols,
        and the FLOPs that took.

        Its convolutions see each 4x4 pixel block on its own, and the paper's tiles start every 28 = 7 x 4
        pixels: its features over the whole band, averaged over each tile's 8x8 window of them, are the
        tiles' own. So each block is computed once instead of up to four times, in one call. Tiles off that
        grid (the last row or column, aligned to the image edge) run on their own.
        """
        block = PATCH // FEATURE_WINDOW
        grid_rows, grid_cols = _on_grid(rows), _on_grid(cols)
        region = lr[:, rows[0] : rows[grid_rows - 1] + PATCH, cols[0] : cols[grid_cols - 1] + PATCH]
        features = self.runner(self.classifier.CondNet, region[None], to_cpu=False)
        pooled = F.avg_pool2d(features, FEATURE_WINDOW, stride=STRIDE // block)[0]  # (32, grid rows, cols)
        head = self.classifier.lastOut
        logits = torch.empty(len(rows), len(cols), head.out_features, device=features.device)
        with torch.inference_mode():
            logits[:grid_rows, :grid_cols] = head(pooled.permute(1, 2, 0).to(head.weight.dtype)).float()
        off_grid = [
            (i, j) for i in range(len(rows)) for j in range(len(cols)) if i >= grid_rows or j >= grid_cols
        ]
        if off_grid:
            tiles = torch.stack(
                [lr[:, rows[i] : rows[i] + PATCH, cols[j] : cols[j] + PATCH] for i, j in off_grid]
            )
            scores = self.runner(self.classifier, tiles, to_cpu=False)
            for (i, j), score in zip(off_grid, scores, strict=True):
                logits[i, j] = score
        # per tile: its 8x8 feature positions, then the linear head (a negligible share)
        per_position = self.plan.classifier_executed / FEATURE_WINDOW**2
        executed = per_position * features.shape[2] * features.shape[3] + self.plan.classifier_executed * (
            len(off_grid)
        )
        return logits.reshape(len(rows) * len(cols), -1), int(executed)

    def _plan_pieces(self, classes: np.ndarray, row_sizes: np.ndarray, col_sizes: np.ndarray) -> list:
        """Pieces for a band's (rows, cols) classes; cells' sizes in LR pixels (`plan_pieces_by_cost`)."""
        if self.plan.flops_budget is not None:  # a harder branch would spend FLOPs the budget does not have
            return plan_pieces(classes, max_rows=self.piece_rows)
        cost = [flops / PATCH**2 for flops in self.plan.branch_executed]  # per LR pixel
        widths = PIECE_WIDTHS_FIXED if self.fixed_shapes else tuple(range(1, MAX_PIECE_CELLS + 1))
        return plan_pieces_by_cost(
            classes, row_sizes, col_sizes, cost, self.context, PIECE_OVERHEAD_FLOPS, self.piece_rows, widths
        )

    def _stream_regions(self, height, width, strips, layout, tally, on_tiles):
        scale, context, fade = self.scale, self.context, FADE
        device = self.device
        row_starts, col_starts = tile_starts(padded_size(height)), tile_starts(padded_size(width))
        row_bounds, col_bounds = cell_bounds(height, row_starts), cell_bounds(width, col_starts)
        # columns of the padded band: `context` mirrored ones on the left, enough on the right for both
        # the context and the classification tiles of images narrower than one tile
        # fixed piece shapes reach up to a cell further right and down than the pieces themselves
        slack = PATCH if self.fixed_shapes else 0
        left, right = context, max(context, PATCH - width) + slack
        # whole pieces per band, and enough tiles per band for full Class-Module batches on narrow images
        tile_rows = math.ceil(BATCHES_PER_BAND * self.runner.batch_size / len(col_starts))
        unit = max(self.piece_rows, PIECE_ROWS)
        rows_per_band = unit * max(1, math.ceil(tile_rows / unit))
        tally.pixels += height * width
        source = _MirroredRows(strips, height, width, layout.channels, left, right)
        channels, colors = layout.channels, layout.color_channels
        acc = torch.zeros(channels, 0, width * scale, device=device)  # weighted colour, then alpha
        weight = torch.zeros(0, width * scale, device=device)
        acc_top = 0  # output row held in acc[:, 0]
        for first in range(0, len(row_starts), rows_per_band):
            last = min(first + rows_per_band, len(row_starts))
            top = min(row_bounds[first] - context, row_starts[first])
            bottom = max(row_bounds[last] + context, row_starts[last - 1] + PATCH) + slack
            lr = torch.from_numpy(source.rows(top, bottom)).to(device).permute(2, 0, 1)  # C, h, left+w+right
            color = lr[:colors]
            if layout.has_alpha:  # premultiplied: what lies under transparent pixels cannot matter
                color = color * lr[-1:]
            rgb = color.expand(3, -1, -1) if colors == 1 else color
            classes, classifier_executed = self._classify_band(
                rgb, [y - top for y in row_starts[first:last]], [x + left for x in col_starts], tally
            )
            pieces = self._plan_pieces(classes, np.diff(row_bounds[first : last + 1]), np.diff(col_bounds))
            for piece in pieces:  # the branch each sub-image runs on: its class or a harder one
                classes[piece.row0 : piece.row1, piece.col0 : piece.col1] = piece.branch
            tally.add(classes.ravel(), self.plan, classifier_executed)
            if on_tiles is not None:
                on_tiles(classes.size, classes.ravel(), row_starts[first:last], col_starts)

            band_bottom = (row_bounds[last] + fade) * scale
            if band_bottom - acc_top > acc.shape[1]:  # the rows carried over, then zeros (one copy, no cat)
                acc, carried = acc.new_zeros(channels, band_bottom - acc_top, acc.shape[2]), acc
                acc[:, : carried.shape[1]] = carried
                weight, carried = weight.new_zeros(band_bottom - acc_top, weight.shape[1]), weight
                weight[: carried.shape[0]] = carried
            self._run_pieces(
                pieces, rgb, (first, top, left), (row_bounds, col_bounds), acc, weight, acc_top, tally, colors
            )
            if layout.has_alpha:  # alpha is no picture to restore: bicubic over the band, with its context
                owned = slice(row_bounds[first] - top - context, row_bounds[last] - top + context)
                alpha = bicubic(lr[None, -1:, owned, left - context : left + width + context], scale)
                crop = context * scale
                start = row_bounds[first] * scale - acc_top
                acc[-1, start : start + (row_bounds[last] - row_bounds[first]) * scale] = alpha[
                    0, 0, crop:-crop, crop:-crop
                ]

            done_until = (row_bounds[last] - fade) * scale if last < len(row_starts) else height * scale
            finished = acc[:, : done_until - acc_top]
            out = finished[:colors].div_(weight[None, : done_until - acc_top])  # in place: acc is left behind
            if layout.has_alpha:
                alpha = finished[-1:].clamp(0, 1)
                out = torch.where(alpha > ALPHA_FLOOR, out / alpha.clamp_min(ALPHA_FLOOR), out)
                out = torch.cat([out, alpha], dim=0)
            if done_until > acc_top:
                yield out.clamp_(0, 1).permute(1, 2, 0).cpu().numpy()
            acc = acc[:, done_until - acc_top :].clone()
            weight = weight[done_until - acc_top :].clone()
            acc_top = done_until

    def _run_pieces(self, pieces, rgb, origin, bounds, acc, weight, acc_top, tally, colors):
        """Run every piece of a band on its branch, back-project it, and add it, cross-faded, into acc.

        rgb: the band's (3, h, w) LR pixels; origin: (first cell row of the band, image row of rgb's row 0,
        mirrored columns left of the image); bounds: the cell bounds of rows and columns; acc (C, h', W)
        and weight (h', W) hold output rows from `acc_top` on; colors: 1 for grey images (the branches'
        three channels are averaged), 3 for colour.
        """
        scale, context, fade = self.scale, self.context, FADE
        first, top, left = origin
        row_bounds, col_bounds = bounds
        image_h, image_w = row_bounds[-1], col_bounds[-1]
        # pieces of one branch and one crop size run together: their exact size, or with fixed shapes the
        # size their cell counts fix (a piece of r x c cells is at most r * STRIDE + EDGE_SLACK by
        # c * STRIDE + EDGE_SLACK LR pixels)
        groups: dict[tuple[int, int, int], list] = {}
        for piece in pieces:
            y0, y1 = row_bounds[first + piece.row0], row_bounds[first + piece.row1]
            x0, x1 = col_bounds[piece.col0], col_bounds[piece.col1]
            crop_h, crop_w = y1 - y0, x1 - x0
            if self.fixed_shapes:
                crop_h = max(crop_h, (piece.row1 - piece.row0) * STRIDE + EDGE_SLACK)
                crop_w = max(crop_w, (piece.col1 - piece.col0) * STRIDE + EDGE_SLACK)
            groups.setdefault((piece.branch, crop_h, crop_w), []).append((y0, x0, y1 - y0, x1 - x0))
        # a call holds as many LR pixels as `batch_size` tiles would: larger pieces, fewer per call, so that
        # the features stay as cache-sized as the tiles' (batches of whole pieces ran 1.3x slower on a CPU)
        pixels_per_call = self.runner.batch_size * PATCH**2
        for (branch, crop_h, crop_w), members in groups.items():
            padded_pixels = (crop_h + 2 * context) * (crop_w + 2 * context)
            per_call = max(1, pixels_per_call // padded_pixels)
            executed = self.plan.branch_executed[branch] / PATCH**2  # per LR pixel
            for first_piece in range(0, len(members), per_call):
                chunk = members[first_piece : first_piece + per_call]
                tally.executed_flops += int(self.runner.padded_count(len(chunk)) * padded_pixels * executed)
                crops = torch.stack(
                    [
                        rgb[
                            :,
                            y0 - top - context : y0 - top + crop_h + context,
                            x0 + left - context : x0 + left + crop_w + context,
                        ]
                        for y0, x0, _, _ in chunk
                    ]
                )
                sr = self.runner(self.branches[branch], crops, to_cpu=False)
                if self.back_projection:
                    sr = back_project(sr, crops.to(sr.dtype), scale)
                if colors == 1:
                    sr = sr.mean(dim=1, keepdim=True)
                start = (context - fade) * scale
                for index, (y0, x0, h, w) in enumerate(chunk):
                    own = sr[
                        index,
                        :,
                        start : start + (h + 2 * fade) * scale,
                        start : start + (w + 2 * fade) * scale,
                    ]
                    self._add_faded(own, y0, x0, h, w, (image_h, image_w), acc, weight, acc_top)

    def _add_faded(self, sr, y0, x0, h, w, image_size, acc, weight, acc_top) -> None:
        """Add one piece's output (C, (h + 2 fade) * scale, (w + 2 fade) * scale), cross-faded, into acc."""
        scale, fade = self.scale, FADE
        image_h, image_w = image_size
        ramp_y, ramp_x = self._ramp(y0, h, image_h, sr.device), self._ramp(x0, w, image_w, sr.device)
        # clip to the image: rows and columns beyond its edges are mirrored context
        oy, ox = (y0 - fade) * scale, (x0 - fade) * scale
        ty0, ty1 = max(oy, 0), min(oy + ramp_y.numel(), image_h * scale)
        tx0, tx1 = max(ox, 0), min(ox + ramp_x.numel(), image_w * scale)
        ramp_y, ramp_x = ramp_y[ty0 - oy : ty1 - oy], ramp_x[tx0 - ox : tx1 - ox]
        part = sr[:, ty0 - oy : ty1 - oy, tx0 - ox : tx1 - ox]
        # in place, with the weights as an outer product of the two ramps: no full-size temporaries
        acc[: part.shape[0], ty0 - acc_top : ty1 - acc_top, tx0:tx1].addcmul_(part * ramp_y[:, None], ramp_x)
        weight[ty0 - acc_top : ty1 - acc_top, tx0:tx1].addr_(ramp_y, ramp_x)

    def _ramp(self, start: int, length: int, image_length: int, device: torch.device) -> torch.Tensor:
        """blend_ramp for a piece owning LR pixels [start, start + length), kept on the device: the weights
        depend only on the length and on which image edges the piece touches (no copy per piece)."""
        key = (length, start <= 0, start + length >= image_length)
        if key not in self._ramps:  # the weights do not move with the piece: compute them at 0
            lo, hi = 0 if key[1] else -1, length if key[2] else length + 1
            self._ramps[key] = torch.from_numpy(blend_ramp(0, length, lo, hi, FADE, self.scale)).to(device)
        return self._ramps[key]

    def _stream_paper(self, height, width, strips, layout, tally, on_tiles):
        scale, out_patch = self.scale, PATCH * self.scale
        padded_h, padded_w = padded_size(height), padded_size(width)
        row_starts, col_starts = tile_starts(padded_h), tile_starts(padded_w)
        # every output pixel is the mean of the tiles covering it; the count factorises into rows x columns
        row_cover = torch.from_numpy(coverage(padded_h * scale, [y * scale for y in row_starts], out_patch))
        col_cover = torch.from_numpy(coverage(padded_w * scale, [x * scale for x in col_starts], out_patch))
        rows_per_band = max(1, math.ceil(BATCHES_PER_BAND * self.runner.batch_size / len(col_starts)))
        tally.pixels += height * width

        lr_rows = _MirroredRows(strips, height, width, layout.channels, 0, padded_w - width)
        acc = torch.zeros(layout.channels, 0, padded_w * scale)  # HR rows still open to additions
        acc_top = 0  # the HR row that acc[:, 0] holds
        for first in range(0, len(row_starts), rows_per_band):
            band = row_starts[first : first + rows_per_band]
            lr = torch.from_numpy(lr_rows.rows(band[0], band[-1] + PATCH)).permute(2, 0, 1)  # C, h, padded_w
            tiles = torch.stack(
                [lr[:, y - band[0] : y - band[0] + PATCH, x : x + PATCH] for y in band for x in col_starts]
            )
            color = tiles[:, : layout.color_channels]
            rgb = color.expand(-1, 3, -1, -1) if layout.color_channels == 1 else color
            classes = self._route(rgb, tally)
            tally.add(classes, self.plan)
            tally.executed_flops += int(np.asarray(self.plan.branch_executed)[classes].sum())
            sr = self._super_resolve(rgb.contiguous(), classes)
            if layout.color_channels == 1:
                sr = sr.mean(dim=1, keepdim=True)
            if layout.has_alpha:  # alpha is not a picture to restore: plain bicubic, stitched the same way
                alpha = F.interpolate(tiles[:, -1:], scale_factor=scale, mode="bicubic", align_corners=False)
                sr = torch.cat([sr, alpha], dim=1)
            if on_tiles is not None:
                on_tiles(len(classes), classes, band, col_starts)

            band_bottom = (band[-1] + PATCH) * scale
            if band_bottom - acc_top > acc.shape[1]:
                grow = torch.zeros(layout.channels, band_bottom - acc_top - acc.shape[1], acc.shape[2])
                acc = torch.cat([acc, grow], dim=1)
            index = 0
            for y in band:
                top = y * scale - acc_top
                for x in col_starts:
                    acc[:, top : top + out_patch, x * scale : x * scale + out_patch] += sr[index]
                    index += 1
            # rows above the next band's first tile can no longer change
            following = first + rows_per_band
            done_until = row_starts[following] * scale if following < len(row_starts) else padded_h * scale
            finished = acc[:, : done_until - acc_top]
            averaged = finished / (row_cover[acc_top:done_until, None] * col_cover[None, :])
            limit = min(done_until, height * scale) - acc_top
            if limit > 0:
                yield averaged[:, :limit, : width * scale].clamp_(0, 1).permute(1, 2, 0).numpy()
            acc = acc[:, done_until - acc_top :].clone()
            acc_top = done_until

    def upscale_array(
        self, lr: np.ndarray, layout: Layout | None = None, tally: RoutingTally | None = None
    ) -> tuple[np.ndarray, RoutingTally]:
        """Whole-array convenience: float32 (H, W, C) in [0, 1] -> (output at the model's scale, routing).

        Pass the same `tally` for several images to total their routing."""
        if lr.ndim == 2:
            lr = lr[:, :, None]
        layout = layout or Layout(
            color_channels=1 if lr.shape[2] in (1, 2) else 3, has_alpha=lr.shape[2] in (2, 4)
        )
        tally = tally if tally is not None else self.new_tally()
        strips = self.stream(
            lr.shape[0], lr.shape[1], [(0, np.ascontiguousarray(lr, dtype=np.float32))], layout, tally
        )
        return np.concatenate(list(strips), axis=0), tally


class _MirroredRows:
    """Rows of the image mirrored beyond every edge (edge pixel repeated, like MATLAB's imresize), pulled
    from the input strips as needed; rows no later request can reach are forgotten.

    Columns come padded by `left` and `right` mirrored columns. Requests must not move backwards.
    """

    def __init__(self, strips, height: int, width: int, channels: int, left: int, right: int):
        self._strips = iter(strips)
        self._height = height
        self._columns = _mirror(np.arange(-left, width + right), width)
        self._rows = np.zeros((0, width + left + right, channels), dtype=np.float32)
        self._top = 0  # image row held in self._rows[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the mirrored image as float32 (stop - start, left + width + right, C)."""
        wanted = _mirror(np.arange(start, stop), self._height)
        lowest = int(wanted.min())
        self._rows = self._rows[max(0, lowest - self._top) :]
        self._top = max(self._top, lowest)
        pieces = [self._rows]
        have = self._top + self._rows.shape[0]
        while have <= wanted.max():
            try:
                _, strip = next(self._strips)
            except StopIteration:
                raise ValueError(f"the image ended at row {have} of {self._height}") from None
            if strip.ndim == 2:
                strip = strip[:, :, None]
            pieces.append(strip.astype(np.float32, copy=False)[:, self._columns])
            have += strip.shape[0]
        if len(pieces) > 1:
            self._rows = np.concatenate(pieces, axis=0)
        return self._rows[wanted - self._top]


def _on_grid(starts: list[int]) -> int:
    """How many of the tile starts lie on the regular grid (every STRIDE pixels from the first)."""
    return sum((start - starts[0]) % STRIDE == 0 for start in starts)


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
    """Map positions outside [0, length) inside by symmetric reflection: 1 0 | 0 1 .. n-1 | n-1 n-2."""
    folded = np.mod(index, 2 * length)
    return np.where(folded < length, folded, 2 * length - 1 - folded)


def upscale_array(
    model: nn.Module,
    lr: np.ndarray,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    branch: int | None = None,
    flops_budget: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Upscale one in-memory image (float32 HxWxC in [0, 1]); returns (output, routing summary)."""
    engine = Upscaler(model, device or "auto", "auto", batch_size, branch, flops_budget)
    sr, tally = engine.upscale_array(lr)
    summary = {
        "tiles": tally.tiles,
        "class_counts": tally.class_counts,
        "flops_ratio": tally.flops_ratio(engine.plan),
    }
    return sr, summary
