"""Running `classsr bench`: the rows compared (base network, ClassSR, ClassSR under a FLOPs budget, the
reference), each through the inference engine on every image, timed and scored; `BenchResult` holds what
they measured and its JSON document."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from classsr_cli.bench.protocol import UPSCALE, ImagePair, Protocol, load_pair
from classsr_cli.errors import ModelError

# -- what is compared -------------------------------------------------------------------------------


@dataclass
class ImageResult:
    image: str
    psnr: float
    psnr_y: float
    seconds: float
    megapixels: float  # of the output
    tiles: int = 0
    flops: int = 0  # paper-convention FLOPs over all tiles of the image
    executed_flops: int = 0  # what ran, context and overlaps included
    plain_flops: float = 0.0  # the base network run once over every LR pixel
    class_counts: list[int] | None = None  # only where a Class-Module chose the branches


@dataclass
class Contender:
    """One row of the table: a way of producing the x4 image, and its results image by image."""

    name: str
    kind: str  # "base", "classsr", "budget", or the reference: "bicubic" (upscale) or "noisy" (denoise)
    params: int
    engine: object | None = None  # an Upscaler; None for the reference row
    note: str | None = None  # what the name cannot say
    results: list[ImageResult] = field(default_factory=list)

    @property
    def classifies(self) -> bool:
        return self.engine is not None and self.engine.plan.classifies

    @property
    def tiles(self) -> int:
        return sum(r.tiles for r in self.results)

    @property
    def flops_per_tile(self) -> float | None:
        """The paper's figure: all sub-images of the set pooled, not a mean of per-image means."""
        if self.engine is None or not self.tiles:
            return None
        return sum(r.flops for r in self.results) / self.tiles

    @property
    def class_fractions(self) -> list[float] | None:
        if not self.classifies or not self.tiles:
            return None
        counts = np.sum([r.class_counts for r in self.results], axis=0)
        return [float(c) / self.tiles for c in counts]

    @property
    def seconds_total(self) -> float:
        return sum(r.seconds for r in self.results)

    @property
    def executed_ratio(self) -> float | None:
        plain = sum(r.plain_flops for r in self.results)
        return (
            sum(r.executed_flops for r in self.results) / plain if self.engine is not None and plain else None
        )


@dataclass
class BaseChoice:
    network: nn.Module
    branch: int | None  # 1-based branch of the ClassSR model to run, when no separate base network exists
    name: str
    params: int
    note: str | None = None


def family_title(family: str) -> str:
    from classsr_cli.models import get_family

    return get_family(family).title


def require_classsr(model: nn.Module) -> None:
    from classsr_cli.models import ClassSR

    if not isinstance(model, ClassSR):
        raise ModelError("--weights holds a single network, not a ClassSR model: pass it with --base-weights")


def choose_base(family: str, base_weights: str | None, classsr: nn.Module) -> BaseChoice:
    """The base (-O) network: --base-weights, else the shipped one, else ClassSR's hardest branch."""
    from classsr_cli.flops import count_params
    from classsr_cli.weights import load_weights, shipped_entry

    require_classsr(classsr)
    title = family_title(family)
    if base_weights or shipped_entry(family, "base") is not None:
        loaded = load_weights(base_weights or family, kind="base", family=family)
        return BaseChoice(loaded.model, None, f"{title}-O", count_params(loaded.model))
    hardest = classsr.num_classes
    note = (
        f"no {title}-O weights shipped, so ClassSR's branch {hardest} runs on every tile (no Class-Module)"
        " as the base network; pass --base-weights FILE for a separately trained one"
    )
    return BaseChoice(
        classsr, hardest, f"ClassSR-{title} branch {hardest} only", count_params(classsr.branches[-1]), note
    )


def build_contenders(
    classsr: nn.Module,
    family: str,
    base: BaseChoice,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    flops_budget: float | None = None,
    tiling: str = "region",
    back_projection: bool | None = None,
    protocol: Protocol = UPSCALE,
) -> list[Contender]:
    """Rows in report order: the base network, ClassSR, ClassSR under the FLOPs budget, the reference
    (bicubic, or the noisy input).

    Every network row runs in the same `tiling` (and back-projection), so the rows differ only in routing.
    """
    from classsr_cli.engine import Upscaler
    from classsr_cli.flops import count_params

    require_classsr(classsr)
    title = family_title(family)
    params = count_params(classsr)

    def engine(model, branch=None, budget=None):
        return Upscaler(model, device, precision, batch_size, branch, budget, tiling, back_projection)

    rows = [
        Contender(base.name, "base", base.params, engine(base.network, branch=base.branch), note=base.note),
        Contender(f"ClassSR-{title}", "classsr", params, engine(classsr)),
    ]
    if flops_budget is not None:
        rows.append(
            Contender(
                f"ClassSR-{title} @{flops_budget:.0%} FLOPs",
                "budget",
                params,
                engine(classsr, budget=flops_budget),
            )
        )
    rows.append(Contender(protocol.reference_name, protocol.reference, 0))
    return rows


# -- running ----------------------------------------------------------------------------------------


def _run_engine(engine, lr: np.ndarray, grid=None):
    """(uint8 x4 output, routing tally, seconds inside the engine)."""
    from classsr_cli.engine import Layout
    from classsr_cli.pixels import unit_to_uint8

    tally = engine.new_tally()
    strips = engine.stream(
        lr.shape[0], lr.shape[1], [(0, lr)], Layout(), tally, on_tiles=grid.add if grid is not None else None
    )
    pieces, seconds = [], 0.0
    while True:
        started = time.perf_counter()
        strip = next(strips, None)
        seconds += time.perf_counter() - started
        if strip is None:
            break
        # quantised strip by strip: a float copy of an 8K output is 0.8 GB
        pieces.append(unit_to_uint8(strip))
    return np.concatenate(pieces, axis=0), tally, seconds


def _reference(inputs: np.ndarray, protocol: Protocol) -> tuple[np.ndarray, float]:
    """The reference output and its seconds: the bicubic upscale, or the noisy input itself."""
    from classsr_cli.imaging.bicubic import imresize
    from classsr_cli.pixels import unit_to_uint8

    started = time.perf_counter()
    out = inputs if protocol.denoise else imresize(inputs, scale=protocol.scale)
    return unit_to_uint8(out), time.perf_counter() - started


def warm_up(contenders: list[Contender]) -> None:
    """One tile through every engine, so one-time costs (allocations, kernel choice) are not timed."""
    tile = np.full((32, 32, 3), 0.5, dtype=np.float32)
    for row in contenders:
        if row.engine is not None:
            _run_engine(row.engine, tile)


@dataclass
class BenchResult:
    dataset: Path
    family: str
    device: str
    rows: list[Contender]
    pairs: list[ImagePair]
    flops_budget: float | None = None
    tiling: str = "region"
    back_projection: bool = True
    class_grids: dict[str, object] = field(default_factory=dict)  # image -> ClassGrid of the ClassSR row
    protocol: Protocol = UPSCALE

    @property
    def base(self) -> Contender:
        return self.rows[0]

    def flops_ratio(self, flops_per_tile: float | None) -> float | None:
        base = self.base.flops_per_tile
        return flops_per_tile / base if flops_per_tile is not None and base else None

    def as_json(self) -> dict:
        reference_kind = self.protocol.reference
        reference = next((row for row in self.rows if row.kind == reference_kind), None)
        rows = []
        for row in self.rows:
            gains = (
                [ours.psnr - theirs.psnr for ours, theirs in zip(row.results, reference.results, strict=True)]
                if reference is not None and row is not reference
                else []
            )
            megapixels = sum(r.megapixels for r in row.results)
            per_image = []
            for result in row.results:
                flops = result.flops / result.tiles if row.engine is not None and result.tiles else None
                per_image.append(
                    {
                        "image": result.image,
                        "psnr": _number(result.psnr),
                        "psnr_y": _number(result.psnr_y),
                        "flops": _number(flops, 0),
                        "flops_ratio": _number(self.flops_ratio(flops), 6),
                        "class_fractions": _fractions(result.class_counts, result.tiles),
                        "seconds": _number(result.seconds),
                        "tiles": result.tiles if row.engine is not None else None,
                    }
                )
            rows.append(
                {
                    "name": row.name,
                    "kind": row.kind,
                    **({"note": row.note} if row.note else {}),
                    "params": row.params,
                    "psnr": _number(_mean(r.psnr for r in row.results)),
                    "psnr_y": _number(_mean(r.psnr_y for r in row.results)),
                    "flops": _number(row.flops_per_tile, 0),
                    "flops_ratio": _number(self.flops_ratio(row.flops_per_tile), 6),
                    "executed_ratio": _number(row.executed_ratio, 6),
                    f"gain_over_{reference_kind}": _number(_mean(gains)),
                    f"min_gain_over_{reference_kind}": _number(min(gains) if gains else None),
                    "class_fractions": _rounded(row.class_fractions),
                    "seconds": _number(row.seconds_total / len(row.results) if row.results else None),
                    "seconds_total": _number(row.seconds_total),
                    "mp_per_s": _number(megapixels / row.seconds_total if row.seconds_total > 0 else None, 3),
                    "tiles": row.tiles if row.engine is not None else None,
                    "per_image": per_image,
                }
            )
        scored = [pair for pair in self.pairs if not pair.skipped]
        document = {
            "dataset": self.dataset.name,
            "path": str(self.dataset),
            "images": len(scored),
            "family": self.family,
            "task": "denoise" if self.protocol.denoise else "upscale",
            "scale": self.protocol.scale,
            "border": self.protocol.border,
            **({"noise_sigma": self.protocol.noise_sigma} if self.protocol.denoise else {}),
            "device": self.device,
            "flops_budget": self.flops_budget,
            "tiling": self.tiling,
            "back_projection": self.back_projection,
            "rows": rows,
        }
        if not self.protocol.denoise:  # which LR each image used: the set's own file, or made from HR
            document["lr_source"] = {pair.name: pair.lr_source for pair in scored}
            given = [pair.lr for pair in scored if pair.lr is not None]
            document["lr_folder"] = str(given[0].parent) if given else None
        if len(scored) < len(self.pairs):
            document["skipped"] = {pair.name: pair.skipped for pair in self.pairs if pair.skipped}
        return document


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _number(value: float | None, digits: int = 4) -> float | None:
    """JSON has no infinity (identical images give infinite PSNR): such values become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits) if digits else int(round(value))


def _rounded(fractions: list[float] | None) -> list[float] | None:
    return [round(f, 6) for f in fractions] if fractions is not None else None


def _fractions(counts: list[int] | None, tiles: int) -> list[float] | None:
    return _rounded([c / tiles for c in counts]) if counts is not None and tiles else None


def run_bench(
    dataset: Path,
    pairs: list[ImagePair],
    contenders: list[Contender],
    family: str,
    *,
    flops_budget: float | None = None,
    keep_class_grids: bool = False,
    progress=None,
    protocol: Protocol = UPSCALE,
) -> BenchResult:
    """Every contender on every image; each image is read once and its outputs dropped after scoring.

    `progress`: a rich Progress (optional); one bar over the images, the current image and row in its text.
    """
    from rich.markup import escape

    from classsr_cli.engine.pipeline import ClassGrid
    from classsr_cli.metrics import psnr, psnr_y

    engines = [row.engine for row in contenders if row.engine is not None]
    result = BenchResult(
        dataset, family, str(engines[0].device) if engines else "cpu", contenders, pairs, flops_budget
    )
    result.protocol = protocol
    if engines:
        result.tiling, result.back_projection = engines[0].tiling, engines[0].back_projection
    warm_up(contenders)
    scored = [pair for pair in pairs if not pair.skipped]
    task = progress.add_task("images", total=len(scored)) if progress is not None else None
    for pair in scored:
        if progress is not None:
            progress.update(task, description=escape(f"{pair.name}: reading"))
        hr, inputs = load_pair(pair, protocol)
        lr = inputs if protocol.denoise else inputs.astype(np.float32) / 255.0
        megapixels = hr.shape[0] * hr.shape[1] / 1e6
        for row in contenders:
            if progress is not None:
                progress.update(task, description=escape(f"{pair.name}: {row.name}"))
            if row.engine is None:
                sr, seconds = _reference(lr, protocol)
                tally = None
            else:
                grid = ClassGrid() if keep_class_grids and row.kind == "classsr" else None
                sr, tally, seconds = _run_engine(row.engine, lr, grid)
                if grid is not None:
                    result.class_grids[pair.name] = grid
            row.results.append(
                ImageResult(
                    image=pair.name,
                    psnr=psnr(sr, hr, border=protocol.border),
                    psnr_y=psnr_y(sr, hr, border=protocol.border),
                    seconds=seconds,
                    megapixels=megapixels,
                    tiles=tally.tiles if tally else 0,
                    flops=tally.flops if tally else 0,
                    executed_flops=tally.executed_flops if tally else 0,
                    plain_flops=tally.executed_flops / tally.executed_ratio(row.engine.plan)
                    if tally and tally.executed_flops
                    else 0.0,
                    class_counts=list(tally.class_counts) if tally and row.classifies else None,
                )
            )
            del sr
        if progress is not None:
            progress.advance(task)
    if progress is not None:
        progress.remove_task(task)
    return result
