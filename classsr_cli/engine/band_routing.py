"""The Class-Module over a band of the region engine: the class of every 28x28 cell, on the host.

The Class-Module runs once over each chunk of the band (its features, averaged over each sub-image's 8x8
window of them, are the sub-image's own: the tiles start every 28 = 7 x 4 pixels and each feature sees one
4x4 pixel block); the sub-images off the 28-pixel grid (aligned to the image's right or bottom edge) run
alone; one gather puts every cell's logits in place, and the band's class map (or, with a FLOPs budget, its
logits) crosses to the host once. `regions.py` plans and runs the pieces from it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from classsr_cli.engine.chunks import CELL, VIRTUAL, Geometry, Shapes, cell_sources, flat_offsets
from classsr_cli.engine.routing import RoutingPlan, RoutingTally, apply_budget
from classsr_cli.engine.tiling import PATCH

# The Class-Module's features of a 32x32 tile: 8x8 positions, each from a 4x4 pixel block
FEATURE_WINDOW = 8
# Off-grid sub-images (aligned to the image's right or bottom edge) are classified alone, this many a call.
OFF_GRID_BATCH = 32


class BandRouter:
    """Classes of the cells of one image's bands. `tops` (LR rows read above each band's first cell row) and
    `margin` (LR pixels left of the first chunk) place the cells in the band's pixels, `band_w` wide."""

    def __init__(
        self,
        engine,
        shapes: Shapes,
        geometry: Geometry,
        tally: RoutingTally,
        tops: dict[int, int],
        margin: int,
        band_w: int,
    ):
        self.engine = engine
        self.plan: RoutingPlan = engine.plan
        self.device = engine.device
        self.shapes, self.geometry, self.tally = shapes, geometry, tally
        self.tops, self.margin, self.band_w = tops, margin, band_w
        self.decided: dict[int, np.ndarray] = {}  # with a FLOPs budget: each tile row's classes, once decided

    def classes(self, band: int, rgb: torch.Tensor) -> np.ndarray:
        """The class of every cell of the band, on the host.

        rgb: the band's LR pixels as `RegionStream.band_span` reads them, (rows, band_w, 3) float on the
        engine's device, premultiplied by alpha. Returns int64 (band_rows, chunks x chunk_cols): branch
        indices, VIRTUAL for cells past the image. One crossing to the host per band: the class map (or,
        with a FLOPs budget, the logits)."""
        shapes, geometry, plan = self.shapes, self.geometry, self.plan
        width = geometry.chunks_per_band * shapes.chunk_cols
        if not plan.classifies:
            classes = np.full((shapes.band_rows, width), plan.fixed_branch, dtype=np.int64)
            return self._mark_virtual(band, classes)
        module = self.engine.classifier
        head = module.lastOut
        block = PATCH // FEATURE_WINDOW
        grid = []
        top, left = self.tops[band], self.margin
        per_position = plan.classifier_executed / FEATURE_WINDOW**2
        # exact shapes: each chunk's pass covers only its cells inside the image (the rest repeat the last)
        first_cell, stop = geometry.band_cells(band)
        real_rows = stop - first_cell if shapes.exact else shapes.band_rows
        with torch.inference_mode():
            for chunk in range(geometry.chunks_per_band):
                c0 = chunk * shapes.chunk_cols
                real_cols = (
                    min(shapes.chunk_cols, geometry.cell_cols - c0) if shapes.exact else shapes.chunk_cols
                )
                x0 = left + c0 * CELL
                window = rgb[top : top + real_rows * CELL + block, x0 : x0 + real_cols * CELL + block]
                window = window.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
                features = module.CondNet(window)
                self.tally.executed_flops += int(per_position * features.shape[2] * features.shape[3])
                pooled = F.avg_pool2d(features, FEATURE_WINDOW, stride=CELL // block)[0].permute(1, 2, 0)
                if pooled.shape[:2] != (shapes.band_rows, shapes.chunk_cols):  # cells past the image
                    pooled = F.pad(
                        pooled.permute(2, 0, 1)[None],
                        (0, shapes.chunk_cols - pooled.shape[1], 0, shapes.band_rows - pooled.shape[0]),
                        mode="replicate",
                    )[0].permute(1, 2, 0)
                grid.append(pooled)  # (rows, cols, 32)
            pooled = torch.cat(grid, dim=1).reshape(-1, grid[0].shape[-1])
            logits = head(pooled.to(head.weight.dtype)).float()
            sources, off_grid = cell_sources(geometry, band)
            if off_grid:
                logits = torch.cat([logits, self._off_grid(band, rgb, off_grid)])
            index = torch.from_numpy(sources.ravel()).to(self.device, non_blocking=True)
            logits = logits.index_select(0, index)
            if plan.flops_budget is None:
                classes = logits.argmax(dim=1).view(shapes.band_rows, width).cpu().numpy()
            else:
                classes = self._budget(band, logits.cpu().numpy().reshape(shapes.band_rows, width, -1))
        return self._mark_virtual(band, classes)

    def _off_grid(self, band: int, rgb: torch.Tensor, tiles: list[tuple[int, int]]) -> torch.Tensor:
        """Logits of the sub-images off the 28-pixel grid (aligned to the right or bottom edge), run alone."""
        geometry = self.geometry
        first_row = band * self.shapes.band_rows * CELL - self.tops[band]
        starts = np.array(
            [
                (geometry.row_starts[r] - first_row) * self.band_w + geometry.col_starts[c] + self.margin
                for r, c in tiles
            ],
            dtype=np.int64,
        )
        count = len(starts)
        # fixed shapes: calls of OFF_GRID_BATCH tiles (the last padded); exact: one call of them all
        batch = count if self.shapes.exact else OFF_GRID_BATCH
        padded = -(-count // batch) * batch
        starts = np.concatenate([starts, np.full(padded - count, starts[0])])
        offsets = flat_offsets(PATCH, PATCH, self.band_w, self.device)
        flat = rgb.view(-1, 3)
        out = []
        for first in range(0, padded, batch):
            base = torch.from_numpy(starts[first : first + batch]).to(self.device, non_blocking=True)
            tiles_in = flat.index_select(0, (base[:, None] + offsets).view(-1))
            tiles_in = tiles_in.view(batch, PATCH, PATCH, 3).permute(0, 3, 1, 2)
            out.append(self.engine.classifier(tiles_in).float())
        self.tally.executed_flops += padded * self.plan.classifier_executed
        return torch.cat(out)[:count]

    def _budget(self, band: int, logits: np.ndarray) -> np.ndarray:
        """Classes within the FLOPs budget (kept over all sub-images so far), from the cells' logits.

        The sub-images whose first cell row lies in this band are decided here; a cell row whose sub-image
        began in a band above (the last one, aligned to the image's bottom edge, below a band of one cell
        row) takes the classes decided there."""
        geometry, plan, tally = self.geometry, self.plan, self.tally
        first, stop = geometry.band_cells(band)
        tile_rows = geometry.band_tiles(band)
        col_cells = [int(np.flatnonzero(geometry.cols[0] == t)[0]) for t in range(len(geometry.col_starts))]
        if tile_rows:
            row_cells = [int(np.flatnonzero(geometry.rows[0] == t)[0]) - first for t in tile_rows]
            tile_logits = logits[np.ix_(row_cells, col_cells)].reshape(-1, logits.shape[-1])
            total = tally.tiles + tile_logits.shape[0]
            allowance = plan.flops_budget * plan.base_flops * total
            allowance -= plan.classifier_flops * total + (tally.flops - tally.tiles * plan.classifier_flops)
            shifted = tile_logits - tile_logits.max(axis=1, keepdims=True)
            probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
            decided = apply_budget(probs, plan, allowance).reshape(len(tile_rows), len(col_cells))
            self.decided.update(zip(tile_rows, decided, strict=True))
        # every cell takes its sub-image's class
        by_row = np.stack([self.decided[int(tile)] for tile in geometry.rows[0][first:stop]])
        width = logits.shape[1]
        col_index = geometry.cols[0][np.minimum(np.arange(width), geometry.cell_cols - 1)]
        classes = by_row[:, col_index]
        if classes.shape[0] < self.shapes.band_rows:
            classes = np.concatenate(
                [classes, np.repeat(classes[-1:], self.shapes.band_rows - classes.shape[0], axis=0)]
            )
        return classes

    def _mark_virtual(self, band: int, classes: np.ndarray) -> np.ndarray:
        first, stop = self.geometry.band_cells(band)
        classes = np.array(classes, dtype=np.int64)
        classes[stop - first :] = VIRTUAL
        classes[:, self.geometry.cell_cols :] = VIRTUAL
        return classes
