"""`classsr bench`: bicubic, the base network and ClassSR on one test set, measured the way the paper does.

Denoising models (DnCNN, the paper's 4.4 and Table 5) are measured the same way with a `Protocol` of scale 1:
the input is the HR image plus Gaussian noise of the given sigma (0-255 scale, seeded by the image's name,
rounded to 8 bits), the reference row is that noisy input, and PSNR is taken over the whole image.

The protocol of the paper (Sec. 4.1.2, Table 2):
- LR = HR (cropped to a multiple of 4) reduced x4 with MATLAB bicubic, stored as 8-bit; a test set's own LR
  files are used when it has them (`find_pairs` says how they are found), and the report says, image by
  image, which LR was used: the set's own ("given") or made from HR ("made").
- An image too small to score (under 12 px, or 3 for denoising, once cropped) is skipped with a note; the
  set is not refused for it.
- Every network runs through the one inference engine, in the tiling `upscale` uses (regions with context
  and back-projection by default; `--tiling paper`: 32x32 tiles at stride 28, overlaps averaged, as the
  paper), and its output is rounded to 8 bits as a saved image would be.
- PSNR on RGB with 4 pixels (the scale) cropped from each side, averaged over images; PSNR on Y likewise.
- FLOPs: the average over all 32x32 sub-images of the test set (not a mean of per-image means) of the chosen
  branch's paper-convention FLOPs, the Class-Module's included for ClassSR rows; the ratio is to the base.
  `executed_ratio` is what ran (pieces with their context, or overlapping tiles) against the base network
  run once over every LR pixel, the plain way.
- Against bicubic: each row's mean gain in PSNR and its lowest gain on any one image (the quality gate: no
  shipped model may fall below bicubic on a validation photo).

Time is engine time only (no file reading or metric computation), after one warm-up call per engine:
`seconds` is the mean per image, `mp_per_s` the output megapixels per second over the whole set.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from classsr_cli.errors import DataError, ModelError, OutputError

SCALE = 4
BORDER = SCALE  # SR papers crop the scale's worth of pixels from each side before PSNR


@dataclass(frozen=True)
class Protocol:
    """How inputs are made and scored: x4 upscaling (LR by bicubic) or denoising (Gaussian noise, scale 1)."""

    scale: int = SCALE
    noise_sigma: float | None = None  # denoising: noise sigma on the 0-255 scale

    def __post_init__(self):
        if (self.scale == 1) != (self.noise_sigma is not None):
            raise ValueError("a denoising protocol (scale 1) needs a noise sigma, and only it takes one")

    @property
    def denoise(self) -> bool:
        return self.scale == 1

    @property
    def border(self) -> int:
        return self.scale if self.scale > 1 else 0

    @property
    def reference(self) -> str:
        """The reference row's kind: what a user has without any network."""
        return "noisy" if self.denoise else "bicubic"

    @property
    def reference_name(self) -> str:
        return f"Noisy input (sigma {self.noise_sigma:g})" if self.denoise else "Bicubic"

    def describe(self) -> str:
        if self.denoise:
            return f"denoising, Gaussian sigma {self.noise_sigma:g}, PSNR over the whole image"
        return f"x{self.scale}, PSNR with a {self.border}-pixel border"


UPSCALE = Protocol()
MIN_LR_SIDE = 3  # a 4-pixel border crop must leave something of the HR image
PER_IMAGE_TABLE_LIMIT = 30  # more images than this: the per-image table is left to --json and --report
REPORT_FILES = {
    "json": "bench.json",
    "csv": "per_image.csv",
    "plot": "psnr_vs_flops.png",
    "maps": "class_maps",
}


# -- the test set -----------------------------------------------------------------------------------


# Where a set keeps its own LR images, first match wins: DIV2K's and BasicSR's layouts, then a plain LR/
LR_FOLDERS = ("LR_bicubic/X{scale}", "LR_bicubic/x{scale}", "LR/X{scale}", "LR/x{scale}", "LR")
_NAMES_SHOWN = 5  # unmatched files named in an error line before "and N more"


@dataclass(frozen=True)
class ImagePair:
    name: str  # the HR file's stem
    hr: Path
    lr: Path | None  # None: made from HR with bicubic (or, denoising, with noise)
    height: int  # HR size after cropping to a multiple of the scale
    width: int
    skipped: str | None = None  # why the image is not scored (too small), for the report; None: scored

    @property
    def lr_source(self) -> str:
        """ "given" (the set's own LR file) or "made" (from HR, by bicubic or by adding noise)."""
        return "given" if self.lr is not None else "made"


def _upright_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, as the reader will deliver it (EXIF rotation applied)."""
    from classsr_cli.imaging import open_image

    info = open_image(path).info  # the header only: pixels are decoded when the image's turn comes
    return info.height, info.width


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        if path.stem in found:
            raise DataError(
                f"{folder} holds two images named {path.stem}: {found[path.stem].name} and {path.name}"
            )
        found[path.stem] = path
    return found


def pair_key(stem: str, scale: int = SCALE) -> str:
    """The name an HR or LR file shares with its partner: its stem without a trailing scale marker (`x4`,
    `_x4`, `_X4`) and role marker (`_HR`, `_LR`), in either order: `bird_HR_x4` and `bird_LR_x4` give
    `bird`, `0801x4` gives `0801`, `img_001_SRF_4_HR` gives `img_001_SRF_4`."""
    scale_marker = re.compile(rf"[_\-.]?[xX]{scale}$")
    role_marker = re.compile(r"(?:^|[_\-.])(?:HR|LR|hr|lr)$")
    key = scale_marker.sub("", stem)
    key = role_marker.sub("", key)
    return scale_marker.sub("", key) or stem


def _lr_folder(root: Path, scale: int) -> Path | None:
    for pattern in LR_FOLDERS:
        folder = root / pattern.format(scale=scale)
        if folder.is_dir():
            return folder
    return None


def _names(paths: list[Path]) -> str:
    shown = ", ".join(path.name for path in paths[:_NAMES_SHOWN])
    return shown + (f" and {len(paths) - _NAMES_SHOWN} more" if len(paths) > _NAMES_SHOWN else "")


def _match_lr(hr_by_stem: dict[str, Path], lr_files: list[Path], lr_dir: Path, scale: int) -> dict[str, Path]:
    """HR stem -> its LR file: the same stem, the stem with `x4` added, or the same `pair_key`. DataError
    naming them when an LR file matches no HR image or two LR files match one."""
    by_key: dict[str, list[str]] = {}
    for stem in hr_by_stem:
        by_key.setdefault(pair_key(stem, scale), []).append(stem)
    matched: dict[str, Path] = {}
    unmatched = []
    for lr in lr_files:
        stem = lr.stem
        if stem in hr_by_stem:
            partner = stem
        elif stem.endswith(f"x{scale}") and stem[: -len(f"x{scale}")] in hr_by_stem:
            partner = stem[: -len(f"x{scale}")]
        elif len(by_key.get(pair_key(stem, scale), [])) == 1:
            partner = by_key[pair_key(stem, scale)][0]
        else:
            unmatched.append(lr)
            continue
        if partner in matched:
            raise DataError(
                f"{lr_dir}: {matched[partner].name} and {lr.name} are both LR images of "
                f"{hr_by_stem[partner].name}; keep one"
            )
        matched[partner] = lr
    if unmatched:
        raise DataError(
            f"{lr_dir}: {_names(unmatched)} {'match' if len(unmatched) > 1 else 'matches'} no HR image "
            f"(an LR file is named as its HR file, with x{scale} added or _HR made _LR); rename or remove "
            f"{'them' if len(unmatched) > 1 else 'it'}"
        )
    return matched


def find_pairs(
    dataset: str | Path,
    data_root: str | Path | None = None,
    limit: int | None = None,
    protocol: Protocol = UPSCALE,
) -> tuple[Path, list[ImagePair]]:
    """The dataset folder and its (HR, LR) pairs, sorted by name; sizes are checked from headers up front.

    A folder with HR/ (and optionally its own LR images), or a folder of HR photos, or a name looked up under
    the data root. LR images live in the first of LR_bicubic/X4, LR_bicubic/x4, LR/X4, LR/x4 and LR/ that
    exists; an LR file pairs with the HR file of the same stem, of its stem less `x4` (DIV2K: `0801x4.png`
    for `0801.png`), or of the same `pair_key` (Set5/Set14: `bird_LR_x4.png` for `bird_HR_x4.png`). An LR
    folder holding a file that pairs with no HR image is refused (DataError naming it), so that a table
    never silently mixes given and made LR. Denoising uses HR only. Images too small to score are kept as
    pairs with `skipped` set; the others are checked against their LR's size (DataError).
    """
    from classsr_cli.data.testsets import find_dataset
    from classsr_cli.imaging.photos import PHOTO_SUFFIXES, list_photos

    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    root = find_dataset(dataset, data_root)
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    scale, border = protocol.scale, protocol.border
    lr_dir = _lr_folder(root, scale) if not protocol.denoise else None
    hr_files = list_photos(hr_dir)
    if not hr_files:
        layout = "" if hr_dir != root else " (expected HR images in it, or in its HR/ folder)"
        raise DataError(f"no images in {hr_dir}{layout}; looked for {', '.join(PHOTO_SUFFIXES)}")
    hr_by_stem = _by_stem(hr_files, hr_dir)
    lr_by_stem = _match_lr(hr_by_stem, list_photos(lr_dir), lr_dir, scale) if lr_dir else {}
    names = sorted(hr_by_stem)[:limit] if limit else sorted(hr_by_stem)
    pairs = []
    for name in names:
        hr = hr_by_stem[name]
        lr = lr_by_stem.get(name)
        height, width = _upright_size(hr)
        height, width = height // scale * scale, width // scale * scale
        if min(height, width) < scale * MIN_LR_SIDE:
            reason = f"too small for x{scale} with a {border}-pixel border (under {scale * MIN_LR_SIDE} px)"
            pairs.append(ImagePair(name, hr, lr, height, width, skipped=reason))
            continue
        if lr is not None:
            lr_height, lr_width = _upright_size(lr)
            _check_lr_size(lr, (lr_height, lr_width), hr, (height, width))
        pairs.append(ImagePair(name, hr, lr, height, width))
    if all(pair.skipped for pair in pairs):
        raise DataError(f"{hr_dir}: no image large enough to score: {pairs[0].skipped}")
    return root, pairs


def _check_lr_size(lr: Path, lr_size: tuple[int, int], hr: Path, hr_size: tuple[int, int]) -> None:
    wanted = (hr_size[0] // SCALE, hr_size[1] // SCALE)
    if tuple(lr_size) != wanted:
        raise DataError(
            f"{lr}: LR is {lr_size[1]}x{lr_size[0]}, but {hr.name} cropped to a multiple of {SCALE} "
            f"({hr_size[1]}x{hr_size[0]}) needs {wanted[1]}x{wanted[0]}"
        )


def make_lr(hr: np.ndarray) -> np.ndarray:
    """LR from uint8 HR (cropped to a multiple of 4) as make-testsets stores it: bicubic x1/4, 8 bits."""
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8

    return matlab_uint8(imresize(hr.astype(np.float32), scale=1 / SCALE))


def load_pair(pair: ImagePair, protocol: Protocol = UPSCALE) -> tuple[np.ndarray, np.ndarray]:
    """(HR uint8 cropped to a multiple of the scale, input), both (h, w, 3) RGB: the input is the LR image
    (uint8), or for denoising the HR image plus noise seeded by the image's name (float32 in [0, 1] on
    1/255 steps)."""
    from classsr_cli.imaging.photos import read_rgb8

    scale = protocol.scale
    hr = read_rgb8(pair.hr)
    hr = np.ascontiguousarray(hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale])
    if hr.shape[:2] != (pair.height, pair.width):  # the header promised another size
        raise DataError(f"{pair.hr}: decoded as {hr.shape[1]}x{hr.shape[0]}, not {pair.width}x{pair.height}")
    if protocol.denoise:
        import zlib

        from classsr_cli.data.noise import noisy_image

        return hr, noisy_image(hr, protocol.noise_sigma, zlib.crc32(pair.name.encode()))
    if pair.lr is None:
        return hr, make_lr(hr)
    lr = read_rgb8(pair.lr)
    _check_lr_size(pair.lr, lr.shape[:2], pair.hr, hr.shape[:2])
    return hr, lr


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

    def skipped_notes(self) -> list[str]:
        """One line per image left out, saying why."""
        return [f"note: skipped {pair.hr}: {pair.skipped}" for pair in self.pairs if pair.skipped]

    def lr_summary(self) -> str | None:
        """Which LR the images used, in one line: the set's own, made from HR, or which of each."""
        if self.protocol.denoise:
            return None
        scored = [pair for pair in self.pairs if not pair.skipped]
        given = [pair for pair in scored if pair.lr is not None]
        made = [pair.name for pair in scored if pair.lr is None]
        if not made:
            folder = given[0].lr.parent
            return f"LR: the set's own ({folder}) for every image"
        if not given:
            return "LR: made from HR (MATLAB bicubic x1/4) for every image"
        return (
            f"LR: the set's own ({given[0].lr.parent}) for {_count(len(given), 'image')}, made from HR "
            f"(MATLAB bicubic x1/4) for {_count(len(made), 'image')}: {', '.join(made)}"
        )


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


# -- output -----------------------------------------------------------------------------------------


def format_flops(flops: float | None) -> str:
    """Like the paper: 468M, 1.15G, 32.60G."""
    if flops is None:
        return "-"
    if flops >= 1e9:
        return f"{flops / 1e9:.2f}G"
    if flops >= 1e8:
        return f"{flops / 1e6:.0f}M"
    if flops >= 1e6:
        return f"{flops / 1e6:.1f}M"
    return f"{flops / 1e3:.1f}K"


def format_params(params: int) -> str:
    if not params:
        return "-"
    return f"{params / 1e6:.2f}M" if params >= 1e6 else f"{params / 1e3:.1f}K"


def format_classes(fractions: list[float] | None) -> str:
    """Like the paper's class split: 61/23/16 (per cent, simple -> hard)."""
    return "/".join(f"{f * 100:.0f}" for f in fractions) if fractions else "-"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _db(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _compact_table(title: str, first_column: str, columns: tuple[str, ...], min_width: int = 0):
    """A table that fits 80 columns: names wrap on a narrow terminal, figures stay whole."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column(first_column, min_width=min_width)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table


def print_tables(result: BenchResult, console) -> None:
    """The summary like the paper's Table 2, then ClassSR against the base network image by image."""
    document = result.as_json()
    reference = result.protocol.reference
    tiling = f"{result.tiling} tiling" + (", back-projected" if result.back_projection else "")
    # quality and cost in two tables: as one, they needed about 110 columns, and an 80-column terminal cut
    # the model names and the figures themselves
    quality = _compact_table(
        f"{document['dataset']}: {_count(document['images'], 'image')}, {result.protocol.describe()}, "
        f"{tiling}, on {result.device}",
        "model",
        ("PSNR", "PSNR-Y", f"vs {reference} (min)"),
        min_width=16,
    )
    cost = _compact_table(
        "", "model", ("params", "FLOPs", "executed", "classes", "s/img", "MP/s"), min_width=16
    )
    for row in document["rows"]:
        ratio = f" ({row['flops_ratio']:.0%})" if row["flops_ratio"] is not None else ""
        gain = "-"
        if row[f"gain_over_{reference}"] is not None:
            lowest = _db(row[f"min_gain_over_{reference}"], signed=True)
            gain = f"{_db(row[f'gain_over_{reference}'], signed=True)} ({lowest})"
        quality.add_row(row["name"], _db(row["psnr"]), _db(row["psnr_y"]), gain)
        cost.add_row(
            row["name"],
            format_params(row["params"]),
            format_flops(row["flops"]) + ratio,
            f"{row['executed_ratio']:.0%}" if row["executed_ratio"] is not None else "-",
            format_classes(row["class_fractions"]),
            f"{row['seconds']:.3f}" if row["seconds"] is not None else "-",
            f"{row['mp_per_s']:.2f}" if row["mp_per_s"] is not None else "-",
        )
    console.print(quality)
    console.print()
    console.print(cost)
    for row in result.rows:
        if row.note:
            console.print(f"{row.name}: {row.note}", markup=False, highlight=False)
    for line in (result.lr_summary(), *result.skipped_notes()):
        if line:
            console.print(line, markup=False, highlight=False)

    base, classsr = document["rows"][0], document["rows"][1]
    if document["images"] > PER_IMAGE_TABLE_LIMIT:
        console.print(f"per-image figures of {document['images']} images: see --json or --report DIR")
        return
    per_image = _compact_table(
        f"{classsr['name']} against {base['name']}, image by image",
        "image",
        ("base PSNR", "ClassSR PSNR", "gain (dB)", "FLOPs ratio", "classes"),
    )
    for ours, theirs in zip(classsr["per_image"], base["per_image"], strict=True):
        gain = ours["psnr"] - theirs["psnr"] if None not in (ours["psnr"], theirs["psnr"]) else None
        per_image.add_row(
            ours["image"],
            _db(theirs["psnr"]),
            _db(ours["psnr"]),
            _db(gain, signed=True),
            f"{ours['flops_ratio']:.0%}" if ours["flops_ratio"] is not None else "-",
            format_classes(ours["class_fractions"]),
        )
    console.print()
    console.print(per_image)


def prepare_report_dir(path: Path) -> Path:
    """Create the report folder before the long run, so a bad path fails at once."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--report must name a folder, but {path} is a file")
    try:
        (path / REPORT_FILES["maps"]).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the report folder {path}: {error.strerror or error}") from None
    return path


def write_report(
    result: BenchResult, folder: Path, log: Callable[[str], None] = lambda message: None
) -> dict:
    """bench.json, per_image.csv, the PSNR-versus-FLOPs plot and class maps; returns what was written."""
    from classsr_cli.imaging.classmap import write_class_map

    folder = prepare_report_dir(folder)
    document = result.as_json()
    written = {}
    try:
        (folder / REPORT_FILES["json"]).write_text(json.dumps(document, indent=2) + "\n")
        written["json"] = str(folder / REPORT_FILES["json"])
        _write_csv(document, folder / REPORT_FILES["csv"])
        written["csv"] = str(folder / REPORT_FILES["csv"])
    except OSError as error:
        raise OutputError(f"cannot write the report in {folder}: {error.strerror or error}") from None
    if _write_plot(document, folder / REPORT_FILES["plot"]):
        written["plot"] = str(folder / REPORT_FILES["plot"])
    else:
        log("matplotlib is not installed: the PSNR-versus-FLOPs plot was skipped (pip install matplotlib)")
    maps = []
    classsr = next(row for row in result.rows if row.kind == "classsr")
    for pair in result.pairs:
        grid = result.class_grids.get(pair.name)
        if grid is None:
            continue
        target = folder / REPORT_FILES["maps"] / f"{pair.name}.png"
        # tiles are placed in LR pixels; the map is drawn over the HR image, `scale` times larger
        scale = result.protocol.scale
        write_class_map(
            pair.hr,
            target,
            grid.as_array(),
            [y * scale for y in grid.rows],
            [x * scale for x in grid.cols],
            classsr.engine.num_classes,
            overwrite=True,
        )
        maps.append(str(target))
    written["class_maps"] = maps
    return written


def _write_csv(document: dict, path: Path) -> None:
    classes = max((len(r["class_fractions"] or []) for r in document["rows"]), default=0)
    class_columns = [f"class_{index}" for index in range(1, classes + 1)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        sources = document.get("lr_source", {})
        head = ["image", "row", "psnr", "psnr_y", "flops", "flops_ratio", *class_columns, "seconds"]
        writer.writerow(head + (["lr"] if sources else []))
        for row in document["rows"]:
            for entry in row["per_image"]:
                fractions = entry["class_fractions"] or []
                writer.writerow(
                    [
                        entry["image"],
                        row["name"],
                        *(_cell(entry[key]) for key in ("psnr", "psnr_y", "flops", "flops_ratio")),
                        *(_cell(fractions[i]) if i < len(fractions) else "" for i in range(classes)),
                        _cell(entry["seconds"]),
                        *([sources[entry["image"]]] if sources else []),
                    ]
                )


def _cell(value) -> str:
    return "" if value is None else str(value)


# a y axis spans at least this many dB: hundredths of a dB drawn across a whole axis look like a gulf
MIN_PSNR_SPAN = 0.2


def _widen(axes, values: list[float], span: float) -> None:
    """Plain dB tick labels (no offset) over at least `span` dB around `values`."""
    axes.ticklabel_format(axis="y", useOffset=False)
    if values and max(values) - min(values) < span:
        middle = (max(values) + min(values)) / 2
        axes.set_ylim(middle - span / 2, middle + span / 2)


def _write_plot(document: dict, path: Path) -> bool:
    """Fig. 2 of the paper for this set (PSNR against FLOPs per sub-image) and ClassSR's gain per image."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: no display and no global pyplot state
    overview, gains = figure.subplots(1, 2)
    networks = [row for row in document["rows"] if row["flops"] is not None and row["psnr"] is not None]
    for row in networks:
        overview.scatter(row["flops"] / 1e6, row["psnr"], s=60, zorder=3, label=row["name"])
    base, classsr = document["rows"][0], document["rows"][1]
    if base in networks and classsr in networks:
        overview.annotate(
            "",
            xy=(classsr["flops"] / 1e6, classsr["psnr"]),
            xytext=(base["flops"] / 1e6, base["psnr"]),
            arrowprops={"arrowstyle": "->", "color": "grey"},
        )
    if networks:
        overview.legend(loc="best")
    # bicubic sits far below the networks: drawn, it would flatten the differences that matter
    baseline = next((row for row in document["rows"] if row["kind"] in ("bicubic", "noisy")), None)
    reference = (
        f", {baseline['kind']} {baseline['psnr']:.2f} dB" if baseline and baseline["psnr"] is not None else ""
    )
    overview.set_xlabel("FLOPs per 32x32 sub-image (M)")
    overview.set_ylabel("PSNR (dB)")
    overview.set_title(f"{document['dataset']} ({_count(document['images'], 'image')}{reference})")
    overview.set_xlim(left=0)
    _widen(overview, [row["psnr"] for row in networks], MIN_PSNR_SPAN)
    overview.grid(alpha=0.3)

    points = [
        (ours["flops_ratio"], ours["psnr"] - theirs["psnr"])
        for ours, theirs in zip(classsr["per_image"], base["per_image"], strict=True)
        if None not in (ours["flops_ratio"], ours["psnr"], theirs["psnr"])
    ]
    if points:
        ratios, deltas = zip(*points, strict=True)
        gains.scatter([r * 100 for r in ratios], deltas, s=18)
    gains.axhline(0, color="grey", linewidth=1)
    _widen(gains, [0.0, *(delta for _, delta in points)], MIN_PSNR_SPAN)
    gains.set_xlabel(f"{classsr['name']} FLOPs (% of {base['name']})")
    gains.set_ylabel("PSNR gain over the base network (dB)")
    gains.set_title("image by image")
    gains.grid(alpha=0.3)
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise OutputError(f"cannot write the plot {path}: {error.strerror or error}") from None
    return True
