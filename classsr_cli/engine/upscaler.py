"""The inference engine: sub-images -> Class-Module -> per-branch batches -> stitched output, band by band.

Two ways to run the branches (`tiling`):
- "region" (default): the decision is per 32x32 sub-image, as in the paper, but each branch runs on
  rectangles of same-class cells with real neighbouring pixels as context, cross-faded where classes meet,
  then one back-projection step pulls each result to agree with its LR input (`engine/regions.py`,
  `engine/backprojection.py`). Each branch's output matches it run on the whole image (no tile grid).
- "paper": every 32x32 tile runs alone (zero padding at its edges) and overlaps are averaged uniformly,
  exactly as the official code does, to reproduce its outputs and numbers.

The image arrives as consecutive strips of rows and leaves the same way. In region mode it is worked in
bands of rows cut into chunks of a fixed size (`engine/chunks.py`, `engine/regions.py`), so memory is
bounded in width and height and every tensor shape is the same on every image.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classsr_cli.engine.chunks import Geometry, Shapes
from classsr_cli.engine.regions import RegionStream
from classsr_cli.engine.routing import RoutingPlan, RoutingTally, apply_budget, plan_for
from classsr_cli.engine.runner import BatchRunner, pick_device, pick_dtype, reuse_freed_memory
from classsr_cli.engine.tiling import PATCH, coverage, padded_size, tile_starts
from classsr_cli.engine.workspace import Workspace
from classsr_cli.errors import ModelError
from classsr_cli.models.spec import spec_of

# A band holds at least this many batches of tiles, so each branch sees full batches even on narrow images.
BATCHES_PER_BAND = 4
TILINGS = ("region", "paper")
# LR pixels of real image around every piece. Cells run alone with 4 came within 75 dB (CARN-M) and 67 dB
# (FSRCNN) of the whole-image output, with 2 within 58 and 55 dB, with none 43 dB, on a validation photo
# (`python -m benchmarks.context_margin PHOTO`). A network that needs more says so (`engine_context`).
CONTEXT = 4
# Cell rows of a band (and of the big pieces) on a CPU, where the network gives none (`cpu_piece_rows`):
# the features of one cell row stay in the caches. GPUs want size: BAND_ROWS everywhere else.
BAND_ROWS_ON_CPU = 1
BAND_ROWS = 4
# What one more piece costs beyond its pixels on a CPU, in FLOPs of the same speed (planning only). The
# engine of an earlier release measured 0.9 ms a piece, when FSRCNN-O ran 80 MFLOPs in 0.9 ms, each piece then
# being cut, run and blended on its own; pieces now run in batches of their size, gathered and scattered
# together, so a piece costs a share of a batch's work: a third of that is assumed.
PIECE_OVERHEAD = 30e6
# Output canvases on a CPU: a few suffice, its batches are short
CPU_CANVAS_BYTES = 32 * 2**20
# Cell columns of a chunk on a CPU, where the network gives none (`cpu_chunk_cols`): wider chunks made CARN-M
# slower (its features then leave the caches)
CPU_CHUNK_COLS = 8


@dataclass
class Layout:
    """What the pixels of a strip are: colour channels (1 grey or 3 RGB) followed by an optional alpha."""

    color_channels: int = 3
    has_alpha: bool = False

    @property
    def channels(self) -> int:
        return self.color_channels + int(self.has_alpha)


def _hint(branch, name: str):
    """An engine hint from the spec of the family a branch belongs to (None where it gives none)."""
    spec = spec_of(branch)
    return getattr(spec, name, None) if spec is not None else None


def context_for(branches) -> int:
    """LR pixels of real image around every piece: CONTEXT, or more where a branch's family needs more."""
    return max(_hint(branch, "engine_context") or CONTEXT for branch in branches)


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
        shapes: Shapes | None = None,
        graphs: bool | None = None,
        exact_shapes: bool | None = None,
    ):
        """`piece_rows` sets the band's cell rows (and the big pieces'); `shapes` every size of the region
        engine (`engine/chunks.py`; defaults by device and network); `exact_shapes` pieces of any size, cut
        at the image's edges (default: on a CPU) or two fixed shapes and full batches; `graphs` captures each
        bucket's batch as a CUDA graph after its first run (default: on CUDA)."""
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
        if self.device.type == "cpu":
            reuse_freed_memory()
        self.runner = BatchRunner(self.device, pick_dtype(precision, self.device), batch_size)
        self.shapes = shapes or default_shapes(self.plan.branches, self.device, self.runner.batch_size)
        if piece_rows is not None:
            if not 1 <= piece_rows <= 8:
                raise ModelError(f"piece_rows must be 1 to 8, got {piece_rows}")
            self.shapes = replace(self.shapes, band_rows=piece_rows, small=(1, self.shapes.small[1]))
        if exact_shapes is not None:
            self.shapes = replace(self.shapes, exact=exact_shapes)
        if flops_budget is not None:  # a budget keeps each cell's class: pieces of one class, single cells
            self.shapes = replace(self.shapes, small=(1, 1))
        self.piece_rows = self.shapes.band_rows
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.branches = [self.runner.prepare(b) for b in self.plan.branches]
        self.classifier = self.runner.prepare(self.plan.classifier) if self.plan.classifies else None
        self._workspace: Workspace | None = None

    def geometry(self, height: int, width: int) -> Geometry:
        """How the region engine cuts an image of height x width LR pixels into bands and chunks."""
        return Geometry(height, width, self.shapes)

    def workspace(self) -> Workspace:
        """The buffers kept from image to image (made on first use)."""
        if self._workspace is None:
            self._workspace = Workspace(self)
        return self._workspace

    def run_bucket(self, bucket, count: int, step) -> None:
        """Run `step(bucket, count)`, the device work of a batch of the bucket's first `count` pieces:
        eagerly, or on CUDA, from the second batch of that size on, by replaying a graph captured from it
        (the same tensors every time: the bucket's, the canvases, the tables)."""
        with torch.inference_mode():
            runs = bucket.runs.get(count, 0)
            bucket.runs[count] = runs + 1
            if not self.graphs or (runs == 0 and count not in bucket.graphs):
                step(bucket, count)
                return
            if count not in bucket.graphs:
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        step(bucket, count)
                    bucket.graphs[count] = graph
                except RuntimeError:  # not capturable here: run eagerly from now on
                    self.graphs = False
                    step(bucket, count)
                    return
            bucket.graphs[count].replay()

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
        out_dtype: np.dtype | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield the output as (h, scale*width, C) strips, top to bottom: float32 in [0, 1], or with
        `out_dtype` uint8 or uint16 (full range, rounded half up; region tiling quantises on the device).

        `strips` yields (y0, float32 (h, width, C) array) covering the input top to bottom. `on_tiles`, if
        given, is called after each band with (tile count, classes, row starts, column starts).
        Raises ValueError if the strips end before `height` rows.
        """
        tally = tally if tally is not None else self.new_tally()
        if self.tiling == "paper":
            strips_out = self._stream_paper(height, width, strips, layout, tally, on_tiles)
            return strips_out if out_dtype is None else (_to_integers(s, out_dtype) for s in strips_out)
        return self._stream_regions(height, width, strips, layout, tally, on_tiles, out_dtype)

    def _stream_regions(self, height, width, strips, layout, tally, on_tiles, out_dtype=None):
        stream = RegionStream(self, height, width, layout, tally, on_tiles, out_dtype)
        right = stream.band_w - stream.margin - width
        source = _MirroredRows(strips, height, width, layout.channels, stream.margin, right)
        flags = torch.backends.cudnn.flags(enabled=True, benchmark=True) if self.graphs else nullcontext()
        with flags:
            yield from stream.run(source)

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


def default_shapes(branches, device: torch.device, batch_size: int) -> Shapes:
    """The region engine's sizes for these branches on this device: four-cell-row bands on a GPU; on a CPU
    the rows a network asks for (`cpu_piece_rows`), else one (four where it needs more context than
    CONTEXT: thin pieces would be mostly context), and chunks as wide as it asks (`cpu_chunk_cols`), else
    CPU_CHUNK_COLS; calls of `batch_size` tiles' worth of pixels."""
    if device.type == "cpu":
        context = context_for(branches)
        default = BAND_ROWS_ON_CPU if context <= CONTEXT else BAND_ROWS
        rows = max(_hint(branch, "cpu_piece_rows") or default for branch in branches)
    else:
        rows = BAND_ROWS
    if device.type == "cpu":  # exact pieces; what a small piece costs beyond its pixels was measured there
        return Shapes(
            band_rows=rows,
            chunk_cols=max(_hint(branch, "cpu_chunk_cols") or CPU_CHUNK_COLS for branch in branches),
            batch_pixels=batch_size * PATCH**2,
            exact=True,
            piece_overhead=PIECE_OVERHEAD,
            canvas_bytes=CPU_CANVAS_BYTES,
        )
    return Shapes(band_rows=rows, batch_pixels=batch_size * PATCH**2)


def _to_integers(strip: np.ndarray, dtype) -> np.ndarray:
    top = float(np.iinfo(dtype).max)
    scaled = np.multiply(strip, top, dtype=np.float32) + 0.5
    return np.fmin(np.fmax(scaled, 0.0), top).astype(dtype)


class _MirroredRows:
    """Rows of the image mirrored beyond every edge (edge pixel repeated, like MATLAB's imresize), pulled
    from the input strips as needed; rows no later request can reach are forgotten.

    Columns come padded by `left` and `right` mirrored columns. Requests must not move backwards.
    """

    def __init__(self, strips, height: int, width: int, channels: int, left: int, right: int):
        self._strips = iter(strips)
        self._height = height
        self._columns = (left, right)
        self._rows = np.zeros((0, width + left + right, channels), dtype=np.float32)
        self._top = 0  # image row held in self._rows[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the mirrored image as float32 (stop - start, left + width + right, C): a view
        of the rows held where none is mirrored, to be read, not written."""
        wanted = _mirror(np.arange(start, stop), self._height)
        forget = min(max(0, int(wanted.min()) - self._top), self._rows.shape[0])  # only rows held
        self._rows = self._rows[forget:]
        self._top += forget
        pieces = [self._rows]
        have = self._top + self._rows.shape[0]
        while have <= wanted.max():
            try:
                _, strip = next(self._strips)
            except StopIteration:
                raise ValueError(f"the image ended at row {have} of {self._height}") from None
            if strip.ndim == 2:
                strip = strip[:, :, None]
            # numpy's "symmetric" mode is MATLAB's mirror (the edge pixel repeated), folded where wider
            strip = strip.astype(np.float32, copy=False)
            pieces.append(np.pad(strip, ((0, 0), self._columns, (0, 0)), mode="symmetric"))
            have += strip.shape[0]
        if len(pieces) > 1:
            self._rows = np.concatenate(pieces, axis=0)
        if 0 <= start and stop <= self._height:  # no row mirrored: a view
            return self._rows[start - self._top : stop - self._top]
        return self._rows[wanted - self._top]


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
