"""What a region engine keeps from image to image: the buckets' batches, the output canvases, and the tables
of the cross-fade and the scatter (`Workspace`). With fixed shapes they are the same tensors on every image,
so a CUDA graph captured for a bucket's batch replays on any image. `regions.py` runs an image through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from classsr_cli.engine.chunks import CELL, ZERO_RAMP, flat_offsets, ramps

# Half-width, in LR pixels, of the cross-fade between neighbouring pieces.
FADE = 2
# Output canvases kept at least (Shapes.canvas_bytes sets how many more)
MIN_CANVAS_SLOTS = 2


@dataclass
class Bucket:
    """Pieces of one branch and size waiting to run: their LR inputs (gathered) and destinations."""

    branch: int
    height: int  # LR pixels the pieces own (their input has `context` more on every side)
    width: int
    capacity: int
    inputs: torch.Tensor  # (capacity, h, w, 3): NHWC, i.e. channels-last NCHW
    meta: torch.Tensor  # (capacity, 3) int64: flat canvas offset, ramp row of the rows, of the columns
    count: int = 0
    chunks: list = field(default_factory=list)  # serial number of each pending piece's chunk
    offsets: list = field(default_factory=list)  # exact shapes: each pending piece's canvas offset (host)
    runs: dict = field(default_factory=dict)  # batch count -> runs so far
    graphs: dict = field(default_factory=dict)  # batch count -> captured CUDA graph


class Workspace:
    """What an engine keeps from image to image: the buckets' batches, the output canvases and the tables
    of the cross-fade and the scatter. With fixed shapes they are the same tensors on every image, so a
    CUDA graph captured for a bucket's batch replays on any image."""

    def __init__(self, engine):
        shapes, scale, device = engine.shapes, engine.scale, engine.device
        self.shapes = shapes
        self.canvas_h = (shapes.band_rows * CELL + 2 * FADE) * scale
        self.canvas_w = (shapes.chunk_cols * CELL + 2 * FADE) * scale
        slots = max(MIN_CANVAS_SLOTS, shapes.canvas_bytes // (self.canvas_h * self.canvas_w * 3 * 4))
        # zeroed when a chunk takes one: memory is touched only for the canvases in use
        self.canvases = torch.empty(slots, self.canvas_h, self.canvas_w, 3, device=device)
        self.canvas_flat = self.canvases.view(-1, 3)
        self.buckets: dict[tuple[int, int, int], Bucket] = {}
        self._scatter: dict[tuple[int, int], torch.Tensor] = {}
        self._ramps: dict[int, torch.Tensor] = {}
        self.engine = engine

    def bucket(self, branch: int, height: int, width: int) -> Bucket:
        key = (branch, height, width)
        if key not in self.buckets:
            engine, ctx = self.engine, self.engine.context
            capacity = self.shapes.per_batch(height, width, ctx)
            inputs = torch.zeros(
                capacity,
                height + 2 * ctx,
                width + 2 * ctx,
                3,
                device=engine.device,
                dtype=engine.runner.dtype,
            )
            meta = torch.zeros(capacity, 3, dtype=torch.int64, device=engine.device)
            meta[:, 1:] = ZERO_RAMP
            self.buckets[key] = Bucket(branch, height, width, capacity, inputs, meta)
        return self.buckets[key]

    def scatter(self, height: int, width: int) -> torch.Tensor:
        """Flat canvas offsets of a piece's output (its pixels and FADE beyond), from its corner."""
        key = (height, width)
        if key not in self._scatter:
            scale = self.engine.scale
            self._scatter[key] = flat_offsets(
                (height + 2 * FADE) * scale, (width + 2 * FADE) * scale, self.canvas_w, self.engine.device
            )
        return self._scatter[key]

    def ramps(self, length: int) -> torch.Tensor:
        if length not in self._ramps:
            self._ramps[length] = ramps(length, FADE, self.engine.scale, self.engine.device)
        return self._ramps[length]
