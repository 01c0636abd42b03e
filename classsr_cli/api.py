"""The public Python API: load a model, then upscale (or denoise) numpy images or image files.

    import classsr_cli

    restorer = classsr_cli.load()                               # the best shipped model, as `classsr upscale`
    report = restorer.upscale_file("photo.png", "photo-x4.png") # the report `classsr upscale --json` prints
    big = restorer.upscale(array)                               # numpy in, numpy out

Everything `classsr upscale` and `classsr denoise` do goes through here: the choice of model and weights
(`load`, `load_network`, `default_model`), the engine, the handling of grey, alpha and bit depth, and the
report of each file. Errors a caller can cause are `classsr_cli.errors.ClasssrError`s with a one-line
message: ModelError (unknown family, a model of the other task, bad engine options), WeightsError (missing,
corrupt or unfitting weights), InputError (an unreadable image or array), OutputError (an output that
cannot be written, or that exists).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from torch import nn

from classsr_cli.engine import Layout, Upscaler
from classsr_cli.errors import InputError, ModelError, WeightsError
from classsr_cli.models import PREFERENCE, TASKS, family_for_task, get_family, list_families
from classsr_cli.pixels import SAMPLE_TYPES, samples_from_unit, unit_from_samples
from classsr_cli.weights import Loaded, load_weights, shipped_entry, shipped_families, weights_dir

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = [
    "ClassMap",
    "EngineOptions",
    "Restorer",
    "default_model",
    "list_models",
    "load",
    "load_network",
]

PathLike = str | os.PathLike


def list_models(task: str | None = None) -> list[str]:
    """The family names `load(model=...)` takes, all or those of one task ("upscale" or "denoise"), e.g.
    ["fsrcnn", "carn", "srresnet", "rcan", "dncnn"]. Which of them ship weights: `classsr weights list`."""
    if task is not None and task not in TASKS:
        raise ModelError(f"unknown task '{task}': use {' or '.join(TASKS)}")
    return list_families(task)


def default_model(task: str = "upscale") -> str:
    """The most capable family of `task` with installed weights: ClassSR weights first, else a base
    network's (models.PREFERENCE orders the families). WeightsError when none are installed."""
    for kind in ("classsr", "base"):
        installed = shipped_families(kind)
        for family in PREFERENCE[task]:
            if family in installed:
                return family
    raise WeightsError(f"no {task} weights are shipped with this installation: pass --weights FILE")


def load_network(
    model: str | None = None,
    weights: PathLike | None = None,
    *,
    task: str | None = "upscale",
    kind: str | None = None,
    base_fallback: bool = True,
) -> tuple[Loaded, list[str]]:
    """The network to run and notes for the user: (weights.Loaded, notes).

    `weights` (a .safetensors or official .pth file) if given, else the installed weights of `model`, else
    of `default_model(task)`. A model of another task than `task` is refused (ModelError naming the right
    command); task None takes either. `kind` ("classsr" or "base") refuses the other kind. Where a family
    has installed base weights but no ClassSR ones, its base network runs on every tile unless
    `base_fallback` is off (a note says so): as good as the base network, without the savings.
    """
    family = (family_for_task(model, task) if task else get_family(model)).name if model else None
    notes: list[str] = []
    if weights:
        loaded = load_weights(weights, kind=kind, family=family)
        if task:
            family_for_task(loaded.family, task)
        return loaded, notes
    family = family or default_model(task or "upscale")
    if (
        base_fallback
        and kind is None
        and shipped_entry(family, "classsr") is None
        and shipped_entry(family, "base") is not None
    ):
        notes.append(f"no ClassSR weights are shipped for {family} yet: its base network runs on every tile")
        kind = "base"
    kind = kind or "classsr"
    entry = shipped_entry(family, kind)
    if entry is not None and entry["origin"] == "user":  # `weights add` put them before any shipped ones
        shipped = shipped_entry(family, kind, folder=weights_dir()) is not None
        notes.append(
            f"your weights {Path(entry['folder']) / entry['file']} run (added with `classsr weights add`)"
            + (", not the shipped ones" if shipped else "")
        )
    return load_weights(family, kind=kind), notes


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs a model: the options of `classsr upscale` of the same names."""

    batch_size: int | None = None  # tiles per network call (None: 16 on a CPU, 256 on a GPU)
    branch: int | None = None  # send every tile to branch K (1..M, M the base network) instead of routing
    flops_budget: float | None = None  # keep the average FLOPs within this share (0 < F <= 1) of the base's
    # "region": branches run on same-class regions with real context; "paper": every 32x32 tile alone
    tiling: str = "region"
    back_projection: bool | None = None  # pull the output to agree with the input (None: on when upscaling)


def load(
    model: str | None = None,
    weights: PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    *,
    task: str | None = None,
    options: EngineOptions | None = None,
) -> Restorer:
    """Load a model for inference, as `classsr upscale` (or `classsr denoise`) does.

    model: a family name (`list_models()`), None for the best installed one of `task` (`default_model`).
    weights: a weights file (.safetensors, or an official ClassSR .pth); None for the installed weights.
    device: "auto" (CUDA, else MPS, else the CPU), "cpu", "cuda", "cuda:N" or "mps".
    precision: "auto" (fp16 on a GPU, fp32 on a CPU), "fp32", "fp16" or "bf16".
    task: "upscale" or "denoise": which kind of model `model=None` picks, and refuses a model of the other
        (ModelError); None takes the model's own task (upscale when no model is named).
    options: how the engine runs (`EngineOptions`: batch size, fixed branch, FLOPs budget, tiling,
        back-projection); None for `classsr upscale`'s defaults.
    Raises ModelError, WeightsError (see the module's docstring).
    """
    if task is not None and task not in TASKS:
        raise ModelError(f"unknown task '{task}': use {' or '.join(TASKS)}")
    options = options or EngineOptions()
    loaded, notes = load_network(model, weights, task=task)
    engine = Upscaler(
        loaded.model,
        device,
        precision,
        batch_size=options.batch_size,
        branch=options.branch,
        flops_budget=options.flops_budget,
        tiling=options.tiling,
        back_projection=options.back_projection,
    )
    return Restorer(loaded, engine, notes)


class FileOptions(TypedDict, total=False):
    """The keyword options of `Restorer.upscale_file` and `denoise_file`."""

    overwrite: bool  # replace an existing target (an input never)
    class_map: PathLike | None  # also write the image tinted by tile class there (PNG)
    max_pixels: int | None  # refuse inputs of more pixels (None: 2^30, 32768 x 32768)
    on_progress: Callable[[int, int], None] | None  # (tiles routed, tiles in all), as the work goes


@dataclass
class ClassMap:
    """Where the Class-Module sent each 32x32 tile of an image (the paper's Fig. 1, as numbers).

    classes: int64 (tile rows, tile columns), the branch of each tile, 0 = simple ... M-1 = hard.
    rows, cols: the input pixel at which each tile row and column starts (tiles overlap by 4 pixels).
    class_counts: tiles per class; flops_ratio: the paper's FLOPs per tile against the base network's.
    """

    classes: np.ndarray
    rows: list[int]
    cols: list[int]
    class_counts: list[int]
    flops_ratio: float


class Restorer:
    """A loaded model and its engine (`load` makes one): upscale or denoise images, arrays or files.

    Arrays are numpy images (H, W) or (H, W, C): C = 1 grey, 2 grey and alpha, 3 RGB, 4 RGBA (alpha
    last), of uint8, uint16 (all 16 bits used) or float (values in [0, 1]) samples. The result has the
    input's layout and sample type (float: float32), `scale` times the size; alpha is upscaled with the
    colours, grey stays grey, as `classsr upscale` does for files. The samples are those a file written by
    `classsr upscale` holds (8 or 16 bits, rounded as it rounds).
    """

    def __init__(self, loaded: Loaded, engine: Upscaler, notes: list[str] | None = None):
        self.network: nn.Module = loaded.model
        self.family: str = loaded.family
        self.kind: str = loaded.kind  # "classsr", or "base" (one network on every tile)
        self.source: Path = loaded.source  # the weights file
        self.engine = engine
        self.notes: list[str] = list(notes or [])  # for the user: e.g. that a base network runs

    @property
    def task(self) -> str:
        """ "upscale" or "denoise"."""
        return get_family(self.family).task

    @property
    def scale(self) -> int:
        """Output pixels per input pixel along each side: 4, or 1 for a denoiser."""
        return self.engine.scale

    @property
    def widths(self) -> list[int]:
        """The branch widths (channels), simple -> hard, of the networks the engine runs."""
        return [branch.width for branch in self.engine.branches]

    @property
    def description(self) -> str:
        """Which model runs, in words: "ClassSR-CARN-M", "FSRCNN, one network", "... branch 3 only"."""
        title = get_family(self.family).title
        if self.engine.plan.classifies:
            return f"ClassSR-{title}"
        if self.engine.num_classes == 1:
            return f"{title}, one network"
        return f"ClassSR-{title}, branch {self.engine.plan.fixed_branch + 1} only"

    # -- arrays -----------------------------------------------------------------------------------------

    def upscale(self, image: np.ndarray) -> np.ndarray:
        """The image `scale` (4) times larger: (H, W[, C]) -> (4H, 4W[, C]), same sample type.
        ModelError for a denoising model; InputError for an array that is not an image (see the class)."""
        self._check_task("upscale")
        return self.restore(image)

    def denoise(self, image: np.ndarray) -> np.ndarray:
        """The image with its Gaussian noise removed (the sigma the model was trained at, 25 on the 0-255
        scale for the shipped one): same shape and sample type. ModelError for an upscaling model."""
        self._check_task("denoise")
        return self.restore(image)

    def restore(self, image: np.ndarray) -> np.ndarray:
        """The model's own task on `image`: upscaled for an SR model, denoised for a denoiser."""
        unit, layout, dtype, squeeze = _as_unit(image)
        out, _ = self.engine.upscale_array(unit, layout)
        if squeeze:
            out = out[:, :, 0]
        return out.astype(np.float32, copy=False) if dtype is None else samples_from_unit(out, dtype)

    def class_map(self, image: np.ndarray) -> ClassMap:
        """Where each 32x32 tile of `image` goes (an array as `upscale` takes it); runs the engine as
        `upscale` does, so the classes are those an upscale of the image uses."""
        from classsr_cli.engine.pipeline import ClassGrid

        unit, layout, _, _ = _as_unit(image)
        grid, tally = ClassGrid(), self.engine.new_tally()
        strips = self.engine.stream(
            unit.shape[0], unit.shape[1], [(0, unit)], layout, tally, lambda *band: grid.add(*band)
        )
        for _ in strips:
            pass
        return ClassMap(
            classes=grid.as_array().astype(np.int64),
            rows=list(grid.rows),
            cols=list(grid.cols),
            class_counts=list(tally.class_counts),
            flops_ratio=tally.flops_ratio(self.engine.plan),
        )

    # -- files ------------------------------------------------------------------------------------------

    def upscale_file(self, source: PathLike, target: PathLike, **options: Unpack[FileOptions]) -> dict:
        """Upscale the image file `source` into `target` (type from its extension: PNG, JPEG, TIFF, WebP),
        keeping bit depth, alpha and metadata, streamed in strips and written atomically, exactly as
        `classsr upscale SOURCE TARGET` does. Returns the report that command prints with --json: input,
        output, sizes in pixels, tiles, class_counts, flops_ratio, executed_ratio, tiling, seconds,
        device, model (and class_map, pages, note where they apply).

        options (`FileOptions`): overwrite, class_map, max_pixels, on_progress. Raises InputError
        (missing, unreadable or too large input), OutputError (an existing target without `overwrite`, the
        input as output, an unknown type), ModelError for a denoising model; nothing is written then.
        """
        self._check_task("upscale")
        return self.restore_file(source, target, **options)

    def denoise_file(self, source: PathLike, target: PathLike, **options: Unpack[FileOptions]) -> dict:
        """`upscale_file` for a denoiser, as `classsr denoise SOURCE TARGET`: the same size out."""
        self._check_task("denoise")
        return self.restore_file(source, target, **options)

    def restore_file(
        self,
        source: PathLike,
        target: PathLike,
        *,
        overwrite: bool = False,
        class_map: PathLike | None = None,
        max_pixels: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict:
        """The model's own task on one file (`upscale_file`). The run is planned first, as the CLI plans
        it, so that nothing is read or written where an output could lose a file. Folders: `runs.py`."""
        from classsr_cli.engine.plan import plan_run

        plan = plan_run(source, target, class_map, overwrite=overwrite)
        if plan.from_folder:
            raise InputError(f"{source} is a folder: this takes one image file (folders: classsr_cli.runs)")
        report = self.run_job(
            plan.jobs[0], overwrite=overwrite, max_pixels=max_pixels, on_progress=on_progress
        )
        return self.report(report)

    def run_job(
        self,
        job,
        *,
        overwrite: bool = False,
        max_pixels: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ):
        """One planned job (`engine.plan.Job`: source, target, class map) through the engine; returns the
        engine's ImageReport (`report` makes it the JSON document)."""
        from classsr_cli.engine.pipeline import upscale_file
        from classsr_cli.imaging import DEFAULT_MAX_PIXELS

        return upscale_file(
            self.engine,
            job.source,
            job.target,
            overwrite=overwrite,
            max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
            class_map=job.class_map,
            on_progress=on_progress,
        )

    def report(self, image_report) -> dict:
        """An ImageReport as the JSON document `classsr upscale --json` prints: its fields and `model`."""
        return {**image_report.as_json(), "model": self.description}

    def _check_task(self, wanted: str) -> None:
        if self.task != wanted:
            title = get_family(self.family).title
            raise ModelError(f"{title} is a model for {self.task}, not {wanted}: use .{self.task}()")


def _as_unit(image: np.ndarray) -> tuple[np.ndarray, Layout, np.dtype | None, bool]:
    """(float32 (H, W, C) in [0, 1], its layout, the integer sample type or None for float, whether the
    input was (H, W)); InputError for anything that is not an image array."""
    array = np.asarray(image)
    squeeze = array.ndim == 2
    if squeeze:
        array = array[:, :, np.newaxis]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise InputError(
            f"an image array is (H, W) or (H, W, C) with C = 1 to 4 channels, got shape {np.shape(image)}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"the image has no pixels: shape {array.shape}")
    channels = array.shape[2]
    layout = Layout(color_channels=1 if channels <= 2 else 3, has_alpha=channels in (2, 4))
    if array.dtype in SAMPLE_TYPES:
        return unit_from_samples(array), layout, array.dtype, squeeze
    if array.dtype.kind != "f":
        raise InputError(f"image samples are uint8, uint16 or float in [0, 1], got {array.dtype}")
    if not (np.min(array) >= 0.0 and np.max(array) <= 1.0):  # NaN fails both
        raise InputError("float image samples must lie in [0, 1] (no NaN)")
    return np.ascontiguousarray(array, dtype=np.float32), layout, None, squeeze
