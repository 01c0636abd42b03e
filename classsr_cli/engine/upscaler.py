"""The inference engine: tiles -> Class-Module -> per-branch batches -> stitched output, band by band.

The image arrives as consecutive strips of rows and leaves the same way. Only one band of tile rows is in
memory at a time (its LR rows, its tiles, and the HR rows that later tiles can still add to), so peak
memory grows with the image width, not its height.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classsr_cli.engine.routing import RoutingPlan, RoutingTally, apply_budget, plan_for
from classsr_cli.engine.runner import BatchRunner, pick_device, pick_dtype
from classsr_cli.engine.tiling import PATCH, coverage, pad_to_tile, padded_size, tile_starts

# A band holds at least this many batches of tiles, so each branch sees full batches even on narrow images.
BATCHES_PER_BAND = 4


@dataclass
class Layout:
    """What the pixels of a strip are: colour channels (1 grey or 3 RGB) followed by an optional alpha."""

    color_channels: int = 3
    has_alpha: bool = False

    @property
    def channels(self) -> int:
        return self.color_channels + int(self.has_alpha)


class Upscaler:
    """Upscale x4 with a ClassSR model (or a single network) on one device."""

    def __init__(
        self,
        model: nn.Module,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        branch: int | None = None,
        flops_budget: float | None = None,
    ):
        self.plan: RoutingPlan = plan_for(model, branch, flops_budget)
        self.device = pick_device(device)
        self.runner = BatchRunner(self.device, pick_dtype(precision, self.device), batch_size)
        self.branches = [self.runner.prepare(b) for b in self.plan.branches]
        self.classifier = self.runner.prepare(self.plan.classifier) if self.plan.classifies else None
        self.scale = getattr(model, "scale", 4)

    @property
    def num_classes(self) -> int:
        return len(self.branches)

    def new_tally(self) -> RoutingTally:
        return RoutingTally(self.num_classes)

    # -- one band of tiles ------------------------------------------------------------------------

    def _route(self, tiles: torch.Tensor, tally: RoutingTally) -> np.ndarray:
        count = tiles.shape[0]
        if not self.plan.classifies:
            return np.full(count, self.plan.fixed_branch, dtype=np.int64)
        logits = self.runner(self.classifier, tiles)
        if self.plan.flops_budget is None:
            return logits.argmax(dim=1).numpy()
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
        """Yield the x4 output as float32 (h, 4*width, C) strips in [0, 1], top to bottom.

        `strips` yields (y0, float32 (h, width, C) array) covering the input top to bottom. `on_tiles`, if
        given, is called after each band with (tile count, classes, row starts, column starts).
        """
        tally = tally if tally is not None else self.new_tally()
        scale, out_patch = self.scale, PATCH * self.scale
        padded_h, padded_w = padded_size(height), padded_size(width)
        row_starts, col_starts = tile_starts(padded_h), tile_starts(padded_w)
        # every output pixel is the mean of the tiles covering it; the count factorises into rows x columns
        row_cover = torch.from_numpy(coverage(padded_h * scale, [y * scale for y in row_starts], out_patch))
        col_cover = torch.from_numpy(coverage(padded_w * scale, [x * scale for x in col_starts], out_patch))
        rows_per_band = max(1, math.ceil(BATCHES_PER_BAND * self.runner.batch_size / len(col_starts)))

        lr_rows = _RowBuffer(strips, height, width, layout.channels)
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
        """Whole-array convenience: float32 (H, W, C) in [0, 1] -> (x4 output, routing tally).

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


class _RowBuffer:
    """Pulls input strips as needed and hands out row ranges, forgetting rows no later band needs."""

    def __init__(self, strips: Iterable[tuple[int, np.ndarray]], height: int, width: int, channels: int):
        self._strips = iter(strips)
        self._height, self._width, self._channels = height, width, channels
        self._rows = np.zeros((0, padded_size(width), channels), dtype=np.float32)
        self._top = 0  # input row held in self._rows[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the (reflect-padded) image; `start` never moves backwards between calls."""
        self._rows = self._rows[start - self._top :]
        self._top = start
        wanted = min(stop, self._height)
        pieces = [self._rows]
        have = self._top + self._rows.shape[0]
        while have < wanted:
            try:
                _, strip = next(self._strips)
            except StopIteration:
                raise ValueError(f"the image ended at row {have} of {self._height}") from None
            if strip.ndim == 2:
                strip = strip[:, :, None]
            pieces.append(pad_to_tile(strip.astype(np.float32, copy=False))[: strip.shape[0]])
            have += strip.shape[0]
        if len(pieces) > 1:
            self._rows = np.concatenate(pieces, axis=0)
        if stop > self._height:  # only images shorter than one tile: pad by reflection
            return pad_to_tile(self._rows)[start - self._top : stop - self._top]
        return self._rows[: stop - self._top]


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
