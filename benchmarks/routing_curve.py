"""PSNR against FLOPs of routing: ClassSR, its branches run everywhere, and the best routing there could be.

    python -m benchmarks.routing_curve PHOTOS --model fsrcnn [--weights A.safetensors B.safetensors ...]
        [--branches CLASSSR] [--base-weights FILE] [--tolerance 0.05] [--shifts=-2:1:0.25] [--no-measure]
        [--engine-aware] [--cache DIR] [--out curve.json]

PHOTOS is what `classsr bench` takes (the LR is made the same way: MATLAB bicubic x1/4, 8 bits), or a
prepared training folder, whose held-out photos are then used (to choose settings without the validation
photos in view); every
network runs through the default engine (region tiling, back-projection) on the CPU, and PSNR is RGB with a
4-pixel border on 8-bit outputs, averaged over the photos, as in `classsr bench`. The rows (one JSON
document each on stdout, and all of them in --out):

- `bicubic`, `base` (the shipped -O network, else the ClassSR model's hardest branch, or --base-weights)
  and `branch K`: branch K of the ClassSR model (the first --weights, else the shipped one) on every
  sub-image, as `--branch K` runs it: the narrow networks, ClassSR's simplest rival. Their FLOPs are the
  branch's, against the base network's.
- `oracle`: every sub-image takes, over its cells (the engine's 28x28 LR cells, `engine/chunks.py`), the
  output of one branch-everywhere run, the cheapest branch it can afford while the photos' mean PSNR
  stays within --tolerance of the base network's: the classes minimise sum_i SSE_i / SSE_i(base) + lambda
  x FLOPs (i the photos; the mean PSNR moves with each photo's relative error), with the largest lambda
  that holds the tolerance. Its FLOPs count the branches only (no Class-Module is needed to know them).
  The picture is the mosaic of whole-image branch outputs, cut at the cells, so its PSNR is exact for that
  mosaic; the engine itself would cross-fade the pieces' edges and back-project each piece.
- `oracle, planned`: the same classes through the engine's piece planner (`plan_chunk`, chunk by chunk of
  each band: a cell whose own piece would cost more runs on a harder neighbour's piece, and its sub-image
  counts the hardest branch among its cells, as in `classsr bench`), lambda chosen again so that the
  planned mosaic holds the tolerance: the best that routing blind to the engine can do through it.
- `oracle, engine-aware`: starting there, each cell's class is changed wherever that lowers the same sum
  with the classes *after* planning (coordinate descent, chunk by chunk): routing that knows what the
  planner will do with it.
- one row per --weights file: ClassSR through the engine (measured, as `classsr bench` measures it), with
  the mosaic of branch outputs under its Class-Module's classes planned here (`mosaic_psnr`, to show how
  close the mosaic rows are to the engine; `mosaic_matches_engine`: the sub-images' branches planned here
  are those the engine counted), and with --shifts, its Class-Module's logits shifted towards harder
  classes (class j gains j x shift, as `classsr train calibrate --shift` does) and scored on the planned
  mosaic: the curve of that Class-Module (predicted from the mosaic, not measured through the engine),
  with the FLOPs of its own choices before planning (`flops_ratio_unplanned`, what `train calibrate`
  counts).

The planning is that of the CPU engine (exact shapes, its band rows for the network); images so wide that
the engine lowers its bands to bound its output's memory are planned with the full bands.

Branch outputs are reduced to per-cell squared errors and kept in --cache (one file per photo and network),
so reruns with other weights or tolerances cost only the new networks.

    python -m benchmarks.routing_curve --draw curves.png A.json [B.json ...]

draws the --out files side by side (one panel each): PSNR against FLOPs of each Class-Module's shifted
curve, the measured ClassSR rows, the narrow networks (branch 1 and 2 everywhere, then the base network)
and the oracle rows; and prints, for each shifted curve, the FLOPs at which it comes within 0.05 dB of the
base network and its PSNR at 45% and 55% of the FLOPs (linear between the shifts). A panel given as
A.json+B.json draws A's rows and the measured ClassSR and oracle rows of B that A lacks (e.g. a --no-measure
run of several Class-Modules with the measured rows of another run on the same photos).
"""

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from classsr_cli import bench as benchmark
from classsr_cli.engine import Layout, Upscaler
from classsr_cli.engine.chunks import CELL, VIRTUAL, Geometry, plan_chunk
from classsr_cli.engine.tiling import PATCH, pad_to_tile, tile_starts
from classsr_cli.imaging.bicubic import imresize
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.weights import load_base_network, load_weights, shipped_base_entry

# cached errors are per cell of the engine this version of the script plans for
CACHE_VERSION = "chunks"
BORDER = benchmark.BORDER
SCALE = benchmark.SCALE


# -- per-cell errors ----------------------------------------------------------------------------------


def cell_edges(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """LR bounds (rows, columns) of the engine's cells (28x28 LR pixels from the top-left corner, the last
    ones cut at the image's edge) for an image of that geometry."""
    rows = np.minimum(np.arange(geometry.cell_rows + 1) * CELL, geometry.height)
    cols = np.minimum(np.arange(geometry.cell_cols + 1) * CELL, geometry.width)
    return rows, cols


def cell_sse(out: np.ndarray, hr: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(R, C) sums of squared 8-bit errors over each cell's output pixels, the PSNR border left out."""
    diff = out.astype(np.int32) - hr.astype(np.int32)
    squared = np.einsum("hwc,hwc->hw", diff, diff).astype(np.int64)
    squared[:BORDER], squared[-BORDER:], squared[:, :BORDER], squared[:, -BORDER:] = 0, 0, 0, 0
    by_rows = np.add.reduceat(squared, rows[:-1] * SCALE, axis=0)
    return np.add.reduceat(by_rows, cols[:-1] * SCALE, axis=1).astype(np.float64)


def counted_pixels(hr: np.ndarray) -> int:
    return (hr.shape[0] - 2 * BORDER) * (hr.shape[1] - 2 * BORDER) * hr.shape[2]


def psnr_of(sse: float, pixels: int) -> float:
    return math.inf if sse == 0 else 10 * math.log10(255.0**2 * pixels / sse)


def run_engine(engine: Upscaler, lr: np.ndarray):
    """(uint8 output, tally, the classes each sub-image ran on in the engine's order, seconds)."""
    tally = engine.new_tally()
    ran = []
    strips = engine.stream(
        lr.shape[0], lr.shape[1], [(0, lr)], Layout(), tally, on_tiles=lambda n, c, r, s: ran.append(c)
    )
    started = time.perf_counter()
    out = np.concatenate([unit_to_uint8(strip) for strip in strips], axis=0)
    seconds = time.perf_counter() - started
    return out, tally, np.concatenate(ran) if ran else np.zeros(0, np.int64), seconds


def file_tag(path: str | Path) -> str:
    """A short name for a weights file in the cache: the start of its sha256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


class Photos:
    """The photos as `classsr bench` makes them: HR cropped to a multiple of 4, LR by MATLAB bicubic; or,
    for a prepared training folder (one with meta.json), its held-out photos at their largest scale, as
    `train calibrate` and the training's validation read them."""

    def __init__(self, folder: str):
        self.prepared = (Path(folder) / "meta.json").is_file()
        if self.prepared:
            from classsr_cli.data.dataset import val_images

            self.held_out = val_images(Path(folder))
        else:
            self.root, self.pairs = benchmark.find_pairs(folder)

    def __iter__(self):
        if self.prepared:
            for name, hr_path, lr_path in self.held_out:
                lr = np.load(lr_path)
                hr = np.load(hr_path)[: lr.shape[0] * SCALE, : lr.shape[1] * SCALE]
                yield name, np.ascontiguousarray(hr), lr.astype(np.float32) / 255.0
            return
        for pair in self.pairs:
            hr, lr = benchmark.load_pair(pair)
            yield pair.name, hr, lr.astype(np.float32) / 255.0


class CellErrors:
    """Per-cell squared errors of one network on every photo, computed once and kept in the cache."""

    def __init__(self, cache: Path):
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, name: str, make) -> dict:
        path = self.cache / f"{CACHE_VERSION}-{key}__{name}.npz"
        if path.exists():
            with np.load(path) as stored:
                return {k: stored[k] for k in stored.files}
        result = make()
        np.savez(path, **result)
        return result


# -- routing on the mosaic ----------------------------------------------------------------------------


class Planner:
    """The region engine's piece planner for one model (`engine/chunks.py`), as `RegionStream` runs it: each
    band's chunks are covered by pieces at the least executed FLOPs, a piece running on the hardest class
    among its cells; and the count of sub-images, each on the hardest branch among its cells, that
    `classsr bench` reports as FLOPs."""

    def __init__(self, engine: Upscaler):
        self.engine = engine
        self.cost = [flops / PATCH**2 for flops in engine.plan.branch_executed]  # per LR pixel
        self.context = engine.context

    def geometry(self, height: int, width: int) -> Geometry:
        """The engine's geometry for an image of that size. (An image so wide that the engine lowers its
        bands to bound the output's memory is planned here with the full bands.)"""
        return self.engine.geometry(height, width)

    def __call__(self, classes: np.ndarray, geometry: Geometry) -> np.ndarray:
        """The branch every cell runs on, from the class of every cell (cell_rows, cell_cols)."""
        shapes = geometry.shapes
        ran = np.empty_like(classes)
        for r0 in range(0, geometry.cell_rows, shapes.band_rows):
            for c0 in range(0, geometry.cell_cols, shapes.chunk_cols):
                block = (slice(r0, r0 + shapes.band_rows), slice(c0, c0 + shapes.chunk_cols))
                ran[block] = self.chunk(classes[block], geometry, r0, c0)
        return ran

    def chunk(self, classes: np.ndarray, geometry: Geometry, r0: int, c0: int) -> np.ndarray:
        """The branch every cell of one chunk runs on (`classes`: its cells inside the image, from cell
        (r0, c0), a band's first row and a chunk's first column); chunks are planned independently."""
        shapes = geometry.shapes
        full = np.full((shapes.band_rows, shapes.chunk_cols), VIRTUAL, dtype=np.int64)
        full[: classes.shape[0], : classes.shape[1]] = classes
        row_px, col_px = np.full(shapes.band_rows, CELL), np.full(shapes.chunk_cols, CELL)
        if shapes.exact:  # the LR pixels of each cell row and column inside the image
            row_px = np.clip(geometry.height - (r0 + np.arange(shapes.band_rows)) * CELL, 0, CELL)
            col_px = np.clip(geometry.width - (c0 + np.arange(shapes.chunk_cols)) * CELL, 0, CELL)
        ran = plan_chunk(full, self.cost, self.context, shapes, row_px, col_px).classes
        return ran[: classes.shape[0], : classes.shape[1]]

    @staticmethod
    def tiles(ran: np.ndarray, geometry: Geometry) -> np.ndarray:
        """The classes the engine counts (its `_count_band`): each sub-image on the hardest branch among
        its cells in the band where its first cell lies, band by band, in the engine's order."""
        counted = []
        for band in range(geometry.bands):
            first, stop = geometry.band_cells(band)
            tile_rows = geometry.band_tiles(band)
            cells = ran[first:stop]
            row_tiles, col_tiles = geometry.rows[0][first:stop], geometry.cols[0]
            by_col = np.maximum.reduceat(cells, np.flatnonzero(np.diff(col_tiles, prepend=-1)), axis=1)
            row_groups = np.flatnonzero(np.diff(row_tiles, prepend=-1))
            by_tile = np.maximum.reduceat(by_col, row_groups, axis=0)
            counted.append(by_tile[np.isin(row_tiles[row_groups], tile_rows)].ravel())
        return np.concatenate(counted)


def tile_groups(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Per axis, where each sub-image's run of cells starts (cells take the class of the sub-image they
    lie in; several cells may lie in the last one)."""
    rows = np.flatnonzero(np.diff(geometry.rows[0], prepend=-1))
    cols = np.flatnonzero(np.diff(geometry.cols[0], prepend=-1))
    return rows, cols


def to_cells(per_tile: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(tile rows, tile columns, ...) values of the sub-images that hold cells, given to each cell."""
    rows, cols = tile_groups(geometry)
    row_index = np.searchsorted(rows, np.arange(geometry.cell_rows), side="right") - 1
    col_index = np.searchsorted(cols, np.arange(geometry.cell_cols), side="right") - 1
    return per_tile[row_index][:, col_index]


class Mosaic:
    """Branch-everywhere errors of a set of photos: score any routing by the mosaic of their outputs."""

    def __init__(self, errors: list[np.ndarray], pixels: list[int], geometries: list, costs, reference: list):
        self.errors = errors  # per photo (cell rows, cell columns, M) SSEs of each branch run everywhere
        self.pixels = pixels
        self.geometries = geometries
        self.costs = np.asarray(costs, dtype=np.float64)  # paper FLOPs of each branch against the base
        self.weights = [1.0 / float(r) for r in reference]  # 1 / SSE of the reference row, per photo
        self.tile_errors = []  # per photo (tile rows, tile columns, M): summed over each sub-image's cells
        for e, g in zip(errors, geometries, strict=True):
            rows, cols = tile_groups(g)
            self.tile_errors.append(np.add.reduceat(np.add.reduceat(e, rows, axis=0), cols, axis=1))

    def score(self, classes: list[np.ndarray]) -> dict:
        """Of cell classes as run (after planning): mosaic PSNR, and FLOPs as the engine counts them."""
        psnrs = [
            psnr_of(float(np.take_along_axis(e, c[..., None], axis=2).sum()), p)
            for e, c, p in zip(self.errors, classes, self.pixels, strict=True)
        ]
        tiles = np.concatenate([Planner.tiles(c, g) for c, g in zip(classes, self.geometries, strict=True)])
        return {
            "psnr": float(np.mean(psnrs)),
            "per_image": psnrs,
            "flops_ratio": float(self.costs[tiles].mean()),
            "class_fractions": (np.bincount(tiles, minlength=len(self.costs)) / tiles.size).tolist(),
        }

    def lagrangian(self, lam: float) -> list[np.ndarray]:
        """Each sub-image on the branch of least w SSE + lam FLOPs, given to its cells."""
        return [
            to_cells(np.argmin(t * w + lam * self.costs, axis=2), g)
            for t, w, g in zip(self.tile_errors, self.weights, self.geometries, strict=True)
        ]

    def largest_lambda(self, route, target: float) -> tuple[float, list[np.ndarray], dict]:
        """Bisect log(lambda) for the cheapest routing `route(lam)` whose mosaic PSNR is at least `target`."""
        # log10 lambda: from where every cell takes its best branch to where every cell takes the cheapest
        top = math.log10(
            max(float((e * w).max()) for e, w in zip(self.tile_errors, self.weights, strict=True))
        )
        low, high = top - 16.0, top + 2.0
        best = route(10**low)
        if self.score(best)["psnr"] < target:
            return 10**low, best, self.score(best)
        for _ in range(40):
            middle = (low + high) / 2
            if self.score(route(10**middle))["psnr"] >= target:
                low = middle
            else:
                high = middle
        classes = route(10**low)
        return 10**low, classes, self.score(classes)

    def engine_aware(self, classes: list[np.ndarray], lam: float, planner: Planner, sweeps: int = 2):
        """Coordinate descent on sum_i w_i SSE_i + lam FLOPs with every routing scored after planning.

        The planner plans each band's chunks on their own, so each chunk is improved on its own; cells
        are changed one at a time (FLOPs counted per cell)."""
        result = []
        for e, w, c, g in zip(self.errors, self.weights, classes, self.geometries, strict=True):
            c = c.copy()
            band_rows, chunk_cols = g.shapes.band_rows, g.shapes.chunk_cols
            for r0 in range(0, g.cell_rows, band_rows):
                for c0 in range(0, g.cell_cols, chunk_cols):
                    block = (slice(r0, r0 + band_rows), slice(c0, c0 + chunk_cols))
                    errors = e[block] * w

                    def objective(labels, errors=errors, r0=r0, c0=c0, g=g):
                        ran = planner.chunk(labels, g, r0, c0)
                        chosen = np.take_along_axis(errors, ran[..., None], axis=2).sum()
                        return chosen + lam * self.costs[ran].sum()

                    labels = c[block].copy()
                    current = objective(labels)
                    for _ in range(sweeps):
                        changed = False
                        for i in range(labels.shape[0]):
                            for j in range(labels.shape[1]):
                                keep = labels[i, j]
                                for k in range(len(self.costs)):
                                    if k == keep:
                                        continue
                                    labels[i, j] = k
                                    value = objective(labels)
                                    if value < current - 1e-15:
                                        current, keep, changed = value, k, True
                                labels[i, j] = keep
                        if not changed:
                            break
                    c[block] = labels
            result.append(c)
        return result


def class_logits(model, lr: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(cell rows, cell columns, M) Class-Module logits of the sub-image each cell lies in, each sub-image
    classified alone (the engine's features over a band, averaged over each window, are the same)."""
    padded = pad_to_tile(lr)
    row_starts, col_starts = tile_starts(padded.shape[0]), tile_starts(padded.shape[1])
    tiles = [padded[top : top + PATCH, left : left + PATCH] for top in row_starts for left in col_starts]
    batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        logits = torch.cat([model.classifier(part) for part in batch.split(1024)]).float().numpy()
    logits = logits.reshape(len(row_starts), len(col_starts), -1)
    rows, cols = tile_groups(geometry)
    return to_cells(logits[geometry.rows[0][rows]][:, geometry.cols[0][cols]], geometry)


# -- the rows -----------------------------------------------------------------------------------------


def parse_shifts(text: str | None) -> list[float]:
    if not text:
        return []
    start, stop, step = (float(v) for v in text.split(":"))
    return [round(v, 6) for v in np.arange(start, stop + step / 2, step)]


def emit(rows: list, row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def curve_summary(points: list[dict], base_psnr: float, tolerance: float = 0.05) -> dict:
    """Of a shifted curve (rows with psnr and flops_ratio): the least FLOPs at which it reaches the base
    network's PSNR less `tolerance`, and its PSNR at 45% and 55% of the FLOPs (linear between points)."""
    points = sorted(points, key=lambda r: r["flops_ratio"])
    flops = np.array([r["flops_ratio"] for r in points])
    psnr = np.array([r["psnr"] for r in points])
    reach = None
    for i in range(1, len(points)):
        if psnr[i - 1] < base_psnr - tolerance <= psnr[i]:
            t = (base_psnr - tolerance - psnr[i - 1]) / (psnr[i] - psnr[i - 1])
            reach = flops[i - 1] + t * (flops[i] - flops[i - 1])
            break

    def at(ratio):  # None outside the FLOPs the shifts covered
        return round(float(np.interp(ratio, flops, psnr)), 4) if flops[0] <= ratio <= flops[-1] else None

    return {  # None where the curve does not reach: shift further
        "flops_within_tolerance": None if reach is None else round(float(reach), 4),
        "psnr_at_45": at(0.45),
        "psnr_at_55": at(0.55),
    }


def panel_rows(spec: str) -> tuple[dict, list[dict]]:
    """(first file's document, rows) of a panel given as A.json or A.json+B.json+...: A's rows, then the
    `classsr` and `oracle` rows of the others that A lacks."""
    paths = spec.split("+")
    data = json.loads(Path(paths[0]).read_text())
    rows = list(data["rows"])
    seen = {(r["kind"], r["name"]) for r in rows}
    for path in paths[1:]:
        for r in json.loads(Path(path).read_text())["rows"]:
            if r["kind"] in ("classsr", "oracle") and (r["kind"], r["name"]) not in seen:
                rows.append(r)
                seen.add((r["kind"], r["name"]))
    return data, rows


def draw(out: Path, curves: list[str], labels: dict[str, str] | None = None) -> None:
    """One panel per --out file of this script (or A.json+B.json, `panel_rows`): PSNR against
    paper-convention FLOPs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = labels or {}
    figure = Figure(figsize=(5.2 * len(curves), 4.2), dpi=100)
    FigureCanvasAgg(figure)
    for panel, path in enumerate(curves):
        data, rows = panel_rows(str(path))
        axes = figure.add_subplot(1, len(curves), panel + 1)
        narrow = [r for r in rows if r["kind"] == "branch"][:-1] + [r for r in rows if r["kind"] == "base"]
        axes.plot(
            [100 * r["flops_ratio"] for r in narrow], [r["psnr"] for r in narrow], "s--", color="grey",
            label="narrow networks (branch 1, branch 2, base)",
        )  # fmt: skip
        base = next(r for r in rows if r["kind"] == "base")
        axes.axhline(base["psnr"] - 0.05, color="grey", lw=0.8, ls=":", label="base network - 0.05 dB")
        shifted: dict[str, list] = {}
        for r in rows:
            if r["kind"] == "classsr-shifted":
                shifted.setdefault(r["name"].rsplit(" shift ", 1)[0], []).append(r)
        for name, points in shifted.items():
            summary = curve_summary(points, base["psnr"])
            print(json.dumps({"family": data["family"], "curve": name, **summary}), flush=True)
            axes.plot(
                [100 * r["flops_ratio"] for r in points], [r["psnr"] for r in points], ".-",
                label=f"{labels.get(name, Path(name).parent.name or name)}, shifted",
            )  # fmt: skip
        for r in rows:
            if r["kind"] == "classsr":
                name = labels.get(r["name"], Path(r["name"]).parent.name or r["name"])
                axes.plot(100 * r["flops_ratio"], r["psnr"], "*", ms=12, label=f"{name} (engine)")
            elif r["kind"] == "oracle":
                axes.plot(100 * r["flops_ratio"], r["psnr"], "x", ms=9, mew=2, label=r["name"])
        low = min(r["psnr"] for r in rows if r["kind"] == "branch")
        axes.set_ylim(low - 0.02, base["psnr"] + 0.05)
        axes.set_xlim(25, 102)
        axes.set_xlabel("FLOPs per sub-image, % of the base network (paper convention)")
        axes.set_ylabel("PSNR (dB), RGB, mean over the photos")
        axes.set_title(f"{data['family'].upper()}: {len(data['photos'])} photos")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=figure.dpi)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--draw", type=Path, help="draw the JSON files given as arguments into this PNG")
    parser.add_argument(
        "--label", action="append", default=[], help="NAME=LABEL: a weights file's name in the drawing"
    )
    parser.add_argument("photos", nargs="+", help="photos (one folder), or with --draw the JSON files")
    parser.add_argument("--model", help="fsrcnn or carn (the family)")
    parser.add_argument("--weights", nargs="*", default=[], help="ClassSR weights files to route with")
    parser.add_argument(
        "--branches", help="the ClassSR model whose branches run everywhere (default: the shipped one)"
    )
    parser.add_argument(
        "--no-measure", action="store_true", help="--weights only on the mosaic (no engine runs)"
    )
    parser.add_argument(
        "--base-weights",
        help="the base network (default: the shipped -O network, else the ClassSR model's hardest branch)",
    )
    parser.add_argument("--tolerance", type=float, default=0.05, help="dB below the base network")
    parser.add_argument("--shifts", help="start:stop:step of logit shifts per class for each --weights")
    parser.add_argument(
        "--engine-aware", action="store_true", help="add the engine-aware oracle (minutes: planner runs)"
    )
    parser.add_argument("--cache", type=Path, default=Path("runs/routing-cache"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.draw:
        draw(args.draw, list(args.photos), dict(v.split("=", 1) for v in args.label))
        return
    if len(args.photos) != 1 or not args.model:
        parser.error("give one folder of photos and --model")

    torch.set_grad_enabled(False)
    photos = Photos(args.photos[0])
    weights = args.weights
    branches = args.branches or args.model
    loaded = load_weights(branches, kind="classsr", family=args.model)
    first = loaded.model.eval()
    # the cache is keyed by the files' contents (sha256): new weights never meet stale errors
    if args.base_weights:
        base = load_weights(args.base_weights, kind="base", family=args.model).model.eval()
        base_key = "base-" + file_tag(args.base_weights)
    else:  # the installed -O network, else the ClassSR model's hardest branch
        base = load_base_network(args.model)  # WeightsError where the family has no weights
        base_key = "base-" + shipped_base_entry(args.model)["sha256"][:12]  # checked on loading
    cache = CellErrors(args.cache)
    first_key = file_tag(loaded.source)
    rows: list[dict] = []

    base_engine = Upscaler(base, "cpu")
    branch_engines = [Upscaler(first, "cpu", branch=k + 1) for k in range(first.num_classes)]
    planner = Planner(Upscaler(first, "cpu"))
    costs = np.array(branch_engines[0].plan.branch_flops, dtype=np.float64) / base_engine.plan.base_flops
    classifier_share = branch_engines[0].plan.classifier_flops / base_engine.plan.base_flops

    names, pixels, geometries, bicubic, base_sse, errors = [], [], [], [], [], []
    for name, hr, lr in photos:
        geometry = planner.geometry(*lr.shape[:2])
        rows_b, cols_b = cell_edges(geometry)
        names.append(name)
        pixels.append(counted_pixels(hr))
        geometries.append(geometry)

        def network(engine, lr=lr, hr=hr, rows=rows_b, cols=cols_b):
            out = run_engine(engine, lr)[0]
            return {"sse": cell_sse(out, hr, rows, cols)}

        def upscaled(lr=lr, hr=hr, rows=rows_b, cols=cols_b):
            return {"sse": cell_sse(unit_to_uint8(imresize(lr, SCALE)), hr, rows, cols)}

        bicubic.append(cache.get("bicubic", name, upscaled))
        base_sse.append(cache.get(base_key, name, lambda: network(base_engine))["sse"])
        errors.append(
            np.stack(
                [
                    cache.get(f"{first_key}-b{k + 1}", name, lambda e=e: network(e))["sse"]
                    for k, e in enumerate(branch_engines)
                ],
                axis=2,
            )
        )
    bicubic_psnr = [psnr_of(b["sse"].sum(), p) for b, p in zip(bicubic, pixels, strict=True)]

    def row(kind: str, name: str, per_image: list[float], flops_ratio: float | None, **extra) -> dict:
        gains = [a - b for a, b in zip(per_image, bicubic_psnr, strict=True)]
        return {
            "kind": kind,
            "name": name,
            "psnr": round(float(np.mean(per_image)), 4),
            "flops_ratio": None if flops_ratio is None else round(flops_ratio, 4),
            "min_gain_over_bicubic": round(min(gains), 4),
            "per_image": [round(v, 4) for v in per_image],
            **extra,
        }

    emit(rows, row("bicubic", "Bicubic", bicubic_psnr, None))
    base_psnr = [psnr_of(s.sum(), p) for s, p in zip(base_sse, pixels, strict=True)]
    emit(rows, row("base", "base network", base_psnr, 1.0))
    for k in range(first.num_classes):
        per = [psnr_of(e[..., k].sum(), p) for e, p in zip(errors, pixels, strict=True)]
        emit(rows, row("branch", f"branch {k + 1} everywhere", per, float(costs[k])))

    mosaic = Mosaic(errors, pixels, geometries, costs, [s.sum() for s in base_sse])
    target = float(np.mean(base_psnr)) - args.tolerance
    lam, classes, score = mosaic.largest_lambda(mosaic.lagrangian, target)
    note = {
        "classifier_flops_ratio": round(classifier_share, 4),
        "lambda": lam,
        "target_psnr": round(target, 4),
    }
    fractions = {"class_fractions": [round(f, 4) for f in score["class_fractions"]]}
    emit(rows, row("oracle", "oracle", score["per_image"], score["flops_ratio"], **fractions, **note))

    def planned_route(lam):
        return [planner(c, g) for c, g in zip(mosaic.lagrangian(lam), geometries, strict=True)]

    lam_p, planned, score = mosaic.largest_lambda(planned_route, target)
    note["lambda"] = lam_p
    fractions = {"class_fractions": [round(f, 4) for f in score["class_fractions"]]}
    emit(
        rows, row("oracle", "oracle, planned", score["per_image"], score["flops_ratio"], **fractions, **note)
    )

    if args.engine_aware:
        # the descent at the planned oracle's lambda, then lambda again: the cheapest within the tolerance
        def aware_route(lam):
            labels = mosaic.engine_aware(mosaic.lagrangian(lam), lam, planner, sweeps=1)
            return [planner(c, g) for c, g in zip(labels, geometries, strict=True)]

        # the descent trades error for FLOPs, so at the planned oracle's lambda it may fall below the target:
        # smaller lambdas until it holds
        for factor in (1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.2):
            score = mosaic.score(aware_route(lam_p * factor))
            if score["psnr"] >= target:
                break
        note["lambda"] = lam_p * factor
        fractions = {"class_fractions": [round(f, 4) for f in score["class_fractions"]]}
        emit(
            rows,
            row(
                "oracle",
                "oracle, engine-aware",
                score["per_image"],
                score["flops_ratio"],
                **fractions,
                **note,
            ),
        )

    shifts = parse_shifts(args.shifts)
    for path in weights:
        model = load_weights(path, kind="classsr", family=args.model).model.eval()
        same = all(
            torch.equal(a, b)
            for mine, theirs in zip(model.branches, first.branches, strict=True)
            for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True)
        )
        if not same:
            warning = f"{path}: its branches are not those of {branches}; the mosaic rows use the latter"
            print(json.dumps({"warning": warning}), flush=True)
        logits = [class_logits(model, lr, g) for (_, _, lr), g in zip(photos, geometries, strict=True)]
        if not args.no_measure:
            engine = Upscaler(model, "cpu")
            per, counted, tally_flops, tiles, seconds = [], [], 0, 0, 0.0
            for (_, hr, lr), g, p in zip(photos, geometries, pixels, strict=True):
                out, tally, ran, took = run_engine(engine, lr)
                per.append(psnr_of(cell_sse(out, hr, *cell_edges(g)).sum(), p))
                counted.append(ran)
                tally_flops += tally.flops
                tiles += tally.tiles
                seconds += took
            cells = np.concatenate(counted)
            # the same routing planned here from the Class-Module's logits: the mosaic of branch outputs
            planned = [planner(np.argmax(lg, axis=2), g) for lg, g in zip(logits, geometries, strict=True)]
            predicted = np.concatenate(
                [Planner.tiles(c, g) for c, g in zip(planned, geometries, strict=True)]
            )
            measured = row(
                "classsr",
                str(path),
                per,
                tally_flops / tiles / engine.plan.base_flops,
                class_fractions=[round(f, 4) for f in np.bincount(cells, minlength=len(costs)) / cells.size],
                mosaic_psnr=round(mosaic.score(planned)["psnr"], 4),
                mosaic_matches_engine=bool(np.array_equal(predicted, cells)),
                seconds=round(seconds, 1),
            )
            emit(rows, measured)
        for shift in shifts:
            bias = shift * np.arange(len(costs))
            chosen = [np.argmax(lg + bias, axis=2) for lg in logits]
            routed = [planner(c, g) for c, g in zip(chosen, geometries, strict=True)]
            score = mosaic.score(routed)
            unplanned_tiles = np.concatenate(
                [Planner.tiles(c, g) for c, g in zip(chosen, geometries, strict=True)]
            )
            unplanned = float(costs[unplanned_tiles].mean()) + classifier_share
            emit(
                rows,
                row(
                    "classsr-shifted",
                    f"{path} shift {shift:+g}",
                    score["per_image"],
                    score["flops_ratio"] + classifier_share,
                    shift=shift,
                    flops_ratio_unplanned=round(unplanned, 4),
                    class_fractions=[round(f, 4) for f in score["class_fractions"]],
                ),
            )
    if args.out:
        args.out.write_text(
            json.dumps({"photos": names, "family": args.model, "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
