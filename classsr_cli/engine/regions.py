"""Region execution in fixed-size units: the paper's per-sub-image decisions, run as pieces with real context.

The Class-Module decides per 32x32 LR sub-image on the paper's grid (stride 28); each 28x28 cell of the
image takes its sub-image's class (`engine/chunks.py`). The branches run on *pieces* of cells, with
`context` LR pixels of the real image around them (mirrored at the image edge) instead of the zero padding
an isolated tile sees; neighbouring pieces are cross-faded over a few pixels, so no seam shows between
branches, and each piece's output is back-projected onto its input. The result equals running each branch
on the whole image wherever the context covers the network's reach.

How it runs, on any device:
- the LR image arrives in bands of rows; each band is cut into chunks of a fixed size, and the Class-Module
  runs once over each chunk (its features, averaged over each sub-image's window, are the sub-image's own);
- the band's class map crosses to the host once, where every chunk's pieces are planned;
- each branch keeps two buckets, one per piece shape, of fixed batch size; a piece is gathered into its
  bucket by one index operation per band and bucket, and a full bucket runs: the branch, back-projection,
  the cross-fade weights (a product of two precomputed ramps) and one `index_add_` into the chunks'
  output canvases (on a CPU, with exact shapes, a slice addition per piece). Buckets fill across chunks
  and bands; an image's last, short batches run as batches of powers of two (fixed shapes);
- a chunk whose pieces have all run is finished in order, left to right and band by band: the seams it
  shares with its neighbours are carried over in small strips, its output is quantised on the device and
  copied into the band's output rows, which leave when the band is done.
So memory is bounded in both width and height, the branches see two input shapes each whatever the image,
and nothing loops over pieces in Python.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import torch

from classsr_cli.engine.backprojection import back_project, bicubic
from classsr_cli.engine.band_routing import BandRouter
from classsr_cli.engine.chunks import (
    CELL,
    ZERO_RAMP,
    Geometry,
    Shapes,
    cell_count,
    cell_sources,
    flat_offsets,
    plan_chunk,
    ramp_code,
)
from classsr_cli.engine.routing import RoutingPlan, RoutingTally
from classsr_cli.engine.tiling import PATCH
from classsr_cli.engine.workspace import FADE, Bucket, Workspace

# Below this alpha a pixel's colour is not recovered from premultiplied values (it is all but invisible).
ALPHA_FLOOR = 1.0 / 1024
# LR rows read above a band at most: a sub-image aligned to the image's bottom edge starts up to 31 rows above
# the band holding its last cells
TOP_ROWS = PATCH


@dataclass
class _Chunk:
    serial: int
    band: int
    index: int  # within the band
    slot: int
    pending: int = 0


class RegionStream:
    """One image through the region engine; see the module note. Built per image by `Upscaler`."""

    def __init__(self, engine, height: int, width: int, layout, tally: RoutingTally, on_tiles, out_dtype):
        self.engine = engine
        self.plan: RoutingPlan = engine.plan
        self.height, self.width = height, width
        self.layout = layout
        self.tally = tally
        self.on_tiles = on_tiles
        self.out_dtype = out_dtype
        self.scale = engine.scale
        self.context = engine.context
        self.device = engine.device
        self.dtype = engine.runner.dtype
        self.shapes: Shapes = _fit_shapes(
            engine.shapes, width, width * self.scale * layout.channels, out_dtype, self.scale
        )
        self.geometry = Geometry(height, width, self.shapes)
        self.margin = max(self.context, PATCH - CELL)  # LR pixels around each chunk's cells
        self.fade_px = FADE * self.scale
        shapes = self.shapes
        # the band's LR pixels: its cells with `margin` below and on each side, and above them `margin` or
        # what the band's sub-images off the grid need (up to TOP_ROWS); `tops` holds each band's
        self.lattice_w = self.geometry.chunks_per_band * shapes.chunk_cols * CELL
        self.band_w = self.lattice_w + 2 * self.margin
        self.tops: dict[int, int] = {}
        self.router = BandRouter(engine, shapes, self.geometry, tally, self.tops, self.margin, self.band_w)
        space: Workspace = engine.workspace()
        self.space = space
        # this image's bands may be lower and its chunks narrower than the engine's (`_fit_shapes`): each
        # canvas then is the top left of the engine's (offsets into it keep the engine's row length)
        self.canvas_h = (self.shapes.band_rows * CELL + 2 * FADE) * self.scale
        self.canvas_w = (self.shapes.chunk_cols * CELL + 2 * FADE) * self.scale
        self.row_stride = space.canvas_w
        self.slot_size = space.canvas_h * space.canvas_w
        self.canvases = space.canvases[:, : self.canvas_h, : self.canvas_w]
        self.free_slots = deque(range(space.canvases.shape[0]))
        self.gather: dict[tuple[int, int], torch.Tensor] = {}
        # LR pixels of each cell row and column that pieces compute: whole cells with fixed shapes, else
        # what lies inside the image (none for virtual cells)
        rows_px = np.arange(self.geometry.bands * shapes.band_rows) * CELL
        cols_px = np.arange(self.geometry.chunks_per_band * shapes.chunk_cols) * CELL
        self.row_px = np.clip(height - rows_px, 0, CELL) if shapes.exact else np.full(rows_px.size, CELL)
        self.col_px = np.clip(width - cols_px, 0, CELL) if shapes.exact else np.full(cols_px.size, CELL)
        for bucket in space.buckets.values():
            bucket.count, bucket.chunks, bucket.offsets = 0, [], []
        self.records: dict[tuple[int, int], list[np.ndarray]] = {}
        self.cost = [flops / PATCH**2 for flops in self.plan.branch_executed]  # per LR pixel
        self.chunks: deque[_Chunk] = deque()  # live, in order
        self.serial = 0
        self.left_carry = torch.zeros(self.canvas_h, 2 * self.fade_px, 3, device=self.device)
        carry_w = self.lattice_w * self.scale + 2 * self.fade_px
        self.top_carry = torch.zeros(2 * self.fade_px, carry_w, 3, device=self.device)
        self.bottom_carry = torch.zeros_like(self.top_carry)
        self.band_out: dict[int, torch.Tensor] = {}
        self.band_alpha: dict[int, torch.Tensor] = {}
        self.pending_bands: deque[int] = deque()

    # -- the run ------------------------------------------------------------------------------------

    def run(self, source):
        """Yield the output, band by band (rows of the image at the output scale, all columns)."""
        geometry = self.geometry
        self.tally.pixels += self.height * self.width
        for band in range(geometry.bands):
            rows = source.rows(*self.band_span(band))
            # on a CPU in fp32 `lr` shares the reader's rows, which the next band reads again: never
            # written in place
            lr = torch.from_numpy(rows).to(self.device, self.dtype, non_blocking=True)  # (h, w, C)
            color = lr[..., : self.layout.color_channels]
            if self.layout.has_alpha:  # premultiplied: what lies under transparent pixels cannot matter
                color = color * lr[..., -1:]
            rgb = color.expand(-1, -1, 3) if self.layout.color_channels == 1 else color
            rgb = rgb.contiguous()
            classes = self.router.classes(band, rgb)
            self._start_band(band, lr)
            self._enqueue_band(band, rgb, classes)
            yield from self._finish_ready()
        self._flush()
        yield from self._finish_ready()

    def band_span(self, band: int) -> tuple[int, int]:
        """The LR rows [start, stop) the band reads: its cells, `margin` below and above, or above as far
        as its sub-images off the grid start (at most TOP_ROWS); kept in `tops`."""
        first_row = band * self.shapes.band_rows * CELL
        _, off_grid = cell_sources(self.geometry, band)
        starts = [self.geometry.row_starts[row] for row, _ in off_grid]
        self.tops[band] = max(self.margin, first_row - min(starts, default=first_row))
        return first_row - self.tops[band], first_row + self.shapes.band_rows * CELL + self.margin

    # -- planning and gathering --------------------------------------------------------------------

    def _enqueue_band(self, band: int, rgb: torch.Tensor, classes: np.ndarray) -> None:
        shapes, geometry, scale = self.shapes, self.geometry, self.scale
        promote = self.plan.flops_budget is None  # a budget's classes are kept: no harder branch
        ran = np.empty_like(classes)
        first_cell, _ = geometry.band_cells(band)
        band_px = self.row_px[first_cell : first_cell + shapes.band_rows]
        row_edges = np.concatenate([[0], np.cumsum(band_px)])
        for index in range(geometry.chunks_per_band):
            chunk = self._new_chunk(band, index, rgb)
            c0 = index * shapes.chunk_cols
            chunk_px = self.col_px[c0 : c0 + shapes.chunk_cols]
            col_edges = np.concatenate([[0], np.cumsum(chunk_px)])
            chunk_plan = plan_chunk(
                classes[:, c0 : c0 + shapes.chunk_cols],
                self.cost,
                self.context,
                shapes,
                band_px,
                chunk_px,
                promote,
            )
            ran[:, c0 : c0 + shapes.chunk_cols] = chunk_plan.classes
            for row0, row1, col0, col1, branch in chunk_plan.pieces:
                height, width = row_edges[row1] - row_edges[row0], col_edges[col1] - col_edges[col0]
                # LR corner of the piece's input in the band, its output's corner in the chunk's canvas
                y = self.tops[band] + row0 * CELL - self.context
                x = self.margin + (c0 + col0) * CELL - self.context
                dest = chunk.slot * self.slot_size + row0 * CELL * scale * self.row_stride
                dest += col0 * CELL * scale
                code_y = ramp_code(first_cell + row0 == 0, first_cell + row1 >= geometry.cell_rows)
                code_x = ramp_code(c0 + col0 == 0, c0 + col1 >= geometry.cell_cols)
                record = np.array([y * self.band_w + x, dest, code_y, code_x, chunk.serial], dtype=np.int64)
                self.records.setdefault((int(branch), int(height), int(width)), []).append(record)
                chunk.pending += 1
        self._count_band(band, ran)
        self._gather_records(rgb)

    def _gather_records(self, rgb: torch.Tensor) -> None:
        """Gather the planned pieces into their buckets (one index operation each), running full ones."""
        flat = rgb.view(-1, 3)
        records, self.records = self.records, {}
        for key, rows in records.items():
            self._gather(key, flat, np.stack(rows))

    def _gather(self, key: tuple[int, int, int], flat: torch.Tensor, records: np.ndarray) -> None:
        bucket = self.space.bucket(*key)
        ctx = self.context
        size = (bucket.height + 2 * ctx, bucket.width + 2 * ctx)
        if size not in self.gather:
            self.gather[size] = flat_offsets(*size, self.band_w, self.device)
        offsets = self.gather[size]
        table = torch.from_numpy(records[:, :4]).to(self.device, non_blocking=True)
        done = 0
        while done < len(records):
            take = min(len(records) - done, bucket.capacity - bucket.count)
            index = (table[done : done + take, :1] + offsets[None]).view(-1)
            target = bucket.inputs[bucket.count : bucket.count + take].view(-1, 3)
            torch.index_select(flat, 0, index, out=target)
            bucket.meta[bucket.count : bucket.count + take] = table[done : done + take, 1:]
            bucket.chunks.extend(records[done : done + take, 4].tolist())
            if self.shapes.exact:
                bucket.offsets.extend(records[done : done + take, 1].tolist())
            bucket.count += take
            done += take
            if bucket.count == bucket.capacity:
                self._run(bucket)

    # -- running -----------------------------------------------------------------------------------

    def _run(self, bucket: Bucket) -> None:
        """Run a bucket's pieces and add the results into the canvases. A full batch runs at the bucket's
        capacity; a short one (the end of an image) at its own count with exact shapes (a CPU), else as
        batches of powers of two (every one of them warmed up when the bucket was made: no new shape)."""
        pixels = bucket.inputs.shape[1] * bucket.inputs.shape[2]
        self.tally.executed_flops += int(bucket.count * pixels * self.cost[bucket.branch])
        if not self.shapes.exact and not bucket.runs:
            self._warm_up(bucket)
        if bucket.count == bucket.capacity or self.shapes.exact:
            self.engine.run_bucket(bucket, bucket.count, self.bucket_step)
        else:
            left = bucket.count
            while left:
                count = 1 << (left.bit_length() - 1)
                self.engine.run_bucket(bucket, count, self.bucket_step)
                left -= count
                # the rest to the front (no overlap: fewer than `count` are left), for fixed addresses
                bucket.inputs[:left] = bucket.inputs[count : count + left].clone()
                bucket.meta[:left] = bucket.meta[count : count + left].clone()
        for serial in bucket.chunks:
            self._chunk(serial).pending -= 1
        bucket.chunks, bucket.offsets = [], []
        bucket.count = 0
        bucket.meta[:, 1:] = ZERO_RAMP

    def _warm_up(self, bucket: Bucket) -> None:
        """Run every batch size a bucket can use once, on pieces that add nothing (fixed shapes only): the
        device meets all its shapes on the first image. Not counted in any image's executed FLOPs."""
        saved = bucket.meta.clone()
        bucket.meta[:, 1:] = ZERO_RAMP
        count = 1
        while count <= bucket.capacity:
            self.engine.run_bucket(bucket, count, self.bucket_step)
            count *= 2
        self.engine.run_bucket(bucket, bucket.capacity, self.bucket_step)
        bucket.meta.copy_(saved)

    def bucket_step(self, bucket: Bucket, count: int) -> None:
        """The device work of one batch of `count` pieces: branch, back-projection, weights, scatter."""
        scale, ctx = self.scale, self.context
        x = bucket.inputs[:count].permute(0, 3, 1, 2)  # channels-last NCHW view
        meta = bucket.meta[:count]
        sr = self.engine.branches[bucket.branch](x)
        if self.engine.back_projection:
            sr = back_project(sr, x.to(sr.dtype), scale, inplace=True)
        ramp_y, ramp_x = self.space.ramps(bucket.height), self.space.ramps(bucket.width)
        height, width = ramp_y.shape[1], ramp_x.shape[1]
        start = (ctx - FADE) * scale
        used = sr[:, :, start : start + height, start : start + width].permute(0, 2, 3, 1).float()
        if self.shapes.exact:  # a CPU: an add per piece costs less than a scatter of every pixel
            # `used` is a view of the branch's own output (fp32 on a CPU), weighted in place
            _fade_(used, ramp_y[meta[:, 1]], ramp_x[meta[:, 2]], 2 * self.fade_px)
            self._add_pieces(bucket.offsets[:count], used)
            return
        weights = ramp_y[meta[:, 1]][:, :, None, None] * ramp_x[meta[:, 2]][:, None, :, None]
        values = (used * weights).reshape(-1, 3)
        index = (meta[:, :1] + self.space.scatter(bucket.height, bucket.width)[None]).view(-1)
        self.space.canvas_flat.index_add_(0, index, values)

    def _add_pieces(self, offsets: list[int], weighted: torch.Tensor) -> None:
        """Add each piece's weighted output (count, h, w, 3) into the canvases at its flat offset: on a CPU,
        where no kernel is launched, these slice additions took about a third of the time of `index_add_`
        over every pixel (FSRCNN-O on a 480x270 crop: 9 ms against 24 ms of 320)."""
        canvases = self.space.canvases
        slot_px, canvas_w = canvases.shape[1] * canvases.shape[2], canvases.shape[2]
        height, width = weighted.shape[1:3]
        for piece, offset in zip(weighted, offsets, strict=True):
            slot, rest = divmod(offset, slot_px)
            y, x = divmod(rest, canvas_w)
            canvases[slot, y : y + height, x : x + width].add_(piece)

    def _flush(self, serial: int | None = None) -> None:
        """Run the buckets holding pieces of chunk `serial` (None: every bucket holding any)."""
        for bucket in self.space.buckets.values():
            if bucket.count and (serial is None or serial in bucket.chunks):
                self._run(bucket)

    # -- chunks and their output -------------------------------------------------------------------

    def _chunk(self, serial: int) -> _Chunk:
        return self.chunks[serial - self.chunks[0].serial]

    def _new_chunk(self, band: int, index: int, rgb: torch.Tensor) -> _Chunk:
        while not self.free_slots:  # every canvas is waiting for pieces: run what the oldest chunk waits for
            self._gather_records(rgb)
            self._flush(self.chunks[0].serial)
            self._finalize_ready()
        chunk = _Chunk(self.serial, band, index, self.free_slots.popleft())
        self.canvases[chunk.slot].zero_()
        self.chunks.append(chunk)
        self.serial += 1
        return chunk

    def _start_band(self, band: int, lr: torch.Tensor) -> None:
        """The band's output rows (allocated now, filled chunk by chunk) and, with alpha, its LR alpha."""
        rows = self._band_rows(band)
        channels = self.layout.channels
        dtype = torch.float32 if self.out_dtype is None else _TORCH_DTYPES[np.dtype(self.out_dtype)]
        pin = self.device.type == "cuda"
        self.band_out[band] = torch.empty(
            rows[1] - rows[0], self.width * self.scale, channels, dtype=dtype, pin_memory=pin
        )
        if self.layout.has_alpha:
            self.band_alpha[band] = lr[..., -1].float()
        self.pending_bands.append(band)

    def _band_rows(self, band: int) -> tuple[int, int]:
        """The output rows a band finishes: its cells' less FADE at the bottom (the next band's seam)."""
        scale, geometry = self.scale, self.geometry
        top = max(0, band * self.shapes.band_rows * CELL * scale - self.fade_px)
        if band == geometry.bands - 1:
            return top, self.height * scale
        return top, (band + 1) * self.shapes.band_rows * CELL * scale - self.fade_px

    def _finish_ready(self):
        self._finalize_ready()
        while self.pending_bands and self._band_done(self.pending_bands[0]):
            band = self.pending_bands.popleft()
            self.band_alpha.pop(band, None)
            out = self.band_out.pop(band)
            if out.is_pinned():
                torch.cuda.current_stream().synchronize()
            yield out.numpy()

    def _band_done(self, band: int) -> bool:
        return not any(chunk.band == band for chunk in self.chunks) and band < self._bands_started()

    def _bands_started(self) -> int:
        return self.pending_bands[-1] + 1 if self.pending_bands else 0

    def _finalize_ready(self) -> None:
        """Finish chunks in order while the oldest has no piece waiting (a chunk's pieces are all counted
        when it is planned, before the next chunk is made)."""
        while self.chunks and self.chunks[0].pending == 0:
            self._finalize(self.chunks.popleft())

    def _finalize(self, chunk: _Chunk) -> None:
        """Finish a chunk: add the seams carried from its left and upper neighbours, pass its own on, and
        write its finished pixels (quantised on the device) into the band's output rows."""
        f2 = 2 * self.fade_px
        scale, geometry = self.scale, self.geometry
        canvas = self.canvases[chunk.slot]
        last_col = chunk.index == geometry.chunks_per_band - 1
        x0 = chunk.index * self.shapes.chunk_cols * CELL * scale  # output column of the chunk's first cell
        width = self.canvas_w if last_col else self.canvas_w - f2
        if chunk.index:
            canvas[:, :f2] += self.left_carry
        if chunk.band:
            canvas[:f2, :width] += self.top_carry[:, x0 : x0 + width]
        self.left_carry.copy_(canvas[:, self.canvas_w - f2 :])
        self.bottom_carry[:, x0 : x0 + width] = canvas[self.canvas_h - f2 :, :width]
        if last_col:
            self.top_carry, self.bottom_carry = self.bottom_carry, self.top_carry
        # the finished pixels: the canvas's first row and column are output (y0 - fade, x0 - fade)
        band_top, band_bottom = self._band_rows(chunk.band)
        y_canvas0 = chunk.band * self.shapes.band_rows * CELL * scale - self.fade_px
        rows = (max(band_top, y_canvas0), band_bottom)
        x_canvas0 = x0 - self.fade_px
        cols = (max(0, x_canvas0), min(self.width * scale, x_canvas0 + width))
        if rows[1] <= rows[0] or cols[1] <= cols[0]:
            self._release(chunk)
            return
        part = canvas[rows[0] - y_canvas0 : rows[1] - y_canvas0, cols[0] - x_canvas0 : cols[1] - x_canvas0]
        if self.layout.color_channels == 1:
            part = part.mean(dim=2, keepdim=True)
        if self.layout.has_alpha:
            alpha = self._alpha(chunk, rows, cols)
            part = torch.where(alpha > ALPHA_FLOOR, part / alpha.clamp_min(ALPHA_FLOOR), part)
            part = torch.cat([part, alpha], dim=2)
        out = self.band_out[chunk.band]
        target = out[rows[0] - band_top : rows[1] - band_top, cols[0] : cols[1]]
        target.copy_(_quantise(part, target.dtype), non_blocking=True)
        self._release(chunk)

    def _alpha(self, chunk: _Chunk, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """Alpha of the output rows x cols: bicubic over the band's LR alpha (not a picture to restore)."""
        scale, margin = self.scale, 2
        alpha_lr = self.band_alpha[chunk.band]
        first_row = chunk.band * self.shapes.band_rows * CELL - self.tops[chunk.band]  # alpha_lr's first
        y0, y1 = rows[0] // scale - margin, -(-rows[1] // scale) + margin
        x0, x1 = cols[0] // scale - margin, -(-cols[1] // scale) + margin
        window = alpha_lr[y0 - first_row : y1 - first_row, x0 + self.margin : x1 + self.margin]
        enlarged = bicubic(window[None, None], scale)[0, 0]
        top, left = rows[0] - y0 * scale, cols[0] - x0 * scale
        return enlarged[top : top + rows[1] - rows[0], left : left + cols[1] - cols[0], None].clamp(0, 1)

    def _release(self, chunk: _Chunk) -> None:
        self.free_slots.append(chunk.slot)

    # -- counting ----------------------------------------------------------------------------------

    def _count_band(self, band: int, ran: np.ndarray) -> None:
        """Count the band's sub-images on the branch each ran on (the hardest of its cells here)."""
        geometry = self.geometry
        first, stop = geometry.band_cells(band)
        tile_rows = geometry.band_tiles(band)
        cells = ran[: stop - first, : geometry.cell_cols]
        row_tiles = geometry.rows[0][first:stop]
        col_tiles = geometry.cols[0]
        by_col = np.maximum.reduceat(cells, np.flatnonzero(np.diff(col_tiles, prepend=-1)), axis=1)
        row_groups = np.flatnonzero(np.diff(row_tiles, prepend=-1))
        by_tile = np.maximum.reduceat(by_col, row_groups, axis=0)
        keep = np.isin(row_tiles[row_groups], tile_rows)
        tiles = by_tile[keep]
        # the ideal: each cell's pixels inside the image once on its branch, the Class-Module once per pixel
        heights = np.minimum(CELL, self.height - CELL * np.arange(first, stop))
        widths = np.minimum(CELL, self.width - CELL * np.arange(geometry.cell_cols))
        per_pixel = (
            np.asarray(self.cost)[cells] + self.plan.classifier_executed / PATCH**2 * self.plan.classifies
        )
        self.tally.ideal_executed_flops += int((heights[:, None] * widths[None, :] * per_pixel).sum())
        if tiles.size:
            self.tally.add(tiles.ravel(), self.plan, 0)
            if self.on_tiles is not None:
                starts = [geometry.row_starts[t] for t in tile_rows]
                self.on_tiles(tiles.size, tiles.ravel(), starts, geometry.col_starts)


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}
# With exact shapes (a CPU), an image so wide that a band's output rows would take more than this many bytes
# gets lower bands: the output of a band is held whole until it leaves (80000-pixel-wide panoramas)
OUTPUT_BAND_BYTES = 48 * 2**20


def _fit_shapes(shapes: Shapes, width: int, row_samples: int, out_dtype, scale: int) -> Shapes:
    """`shapes` fitted to an image `width` LR pixels wide (exact shapes only: fixed ones keep their shapes
    whatever the image): bands low enough that one band's output rows fit OUTPUT_BAND_BYTES, and, for an
    image narrower than a chunk, one chunk as wide as the image (an image 480 LR pixels wide has 18 cells:
    one chunk of 18 where FSRCNN's chunks are 32), whose canvases and mirrored columns then cover no more
    than the image. The planner picks the same pieces as in the wider chunk, whose columns past the image
    run nothing (`tests/test_regions.py`)."""
    if not shapes.exact:
        return shapes
    itemsize = np.dtype(out_dtype).itemsize if out_dtype is not None else 4
    rows = OUTPUT_BAND_BYTES // max(1, row_samples * itemsize * CELL * scale)
    if rows < shapes.band_rows:
        shapes = replace(shapes, band_rows=max(1, int(rows)), small=(1, shapes.small[1]))
    step = shapes.small[1]
    cols = -(-cell_count(width) // step) * step  # the image's cells, in whole small pieces
    if cols < shapes.chunk_cols:
        shapes = replace(shapes, chunk_cols=cols, big_cols=min(shapes.big_cols, cols))
    return shapes


def _fade_(pieces: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, fade_width: int) -> None:
    """Multiply pieces (n, h, w, C) by their cross-fade weights rows (n, h) x cols (n, w), in place.

    The ramps of planned pieces (`chunks.ramps`, every row but ZERO_RAMP, which only padded batches use)
    differ from 1 only within `fade_width` output pixels of a piece's sides, so only those strips are
    multiplied, where the piece is large enough to have an inside at all."""
    height, width = pieces.shape[1:3]
    if height < 2 * fade_width or width < 2 * fade_width:
        pieces.mul_(rows[:, :, None, None] * cols[:, None, :, None])
        return
    for part in (slice(0, fade_width), slice(height - fade_width, height)):
        pieces[:, part].mul_(rows[:, part, None, None])
    for part in (slice(0, fade_width), slice(width - fade_width, width)):
        pieces[:, :, part].mul_(cols[:, None, part, None])


def _quantise(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Output values (float, nominally [0, 1]) as `dtype`: floats clipped to [0, 1]; integers scaled to
    their full range and rounded half up (as the image writer does), NaN becoming 0."""
    if dtype.is_floating_point:
        return values.clamp(0, 1).to(dtype)
    top = float(torch.iinfo(dtype).max)
    scaled = torch.nan_to_num(values * top + 0.5, nan=0.0).clamp_(0, top)
    return scaled.floor_().to(torch.int32 if dtype == torch.uint16 else dtype).to(dtype)


__all__ = ["ALPHA_FLOOR", "RegionStream"]
