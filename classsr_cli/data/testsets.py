"""make-testsets: Test2K / Test4K / Test8K the paper's way (from DIV8K), or sets of given sizes from photos.

The paper (Sec. 4.1) takes DIV8K images 1201-1300 downsampled to 2K (Test2K), 1301-1400 to 4K (Test4K) and
1401-1500 as they are (Test8K); its authors confirm that Test2K is DIV8K reduced x4 with bicubic (so Test4K is
x2). Each set is OUT/<set>/HR/<name>.png (cropped to a multiple of 4) and OUT/<set>/LR/<name>.png (HR reduced
x4 with MATLAB bicubic), 8-bit PNGs under the same names.

For other folders a size names the long side: "2k" = 2048 px, "4k" = 4096 px, "8k" = 8192 px, a number = that
many pixels, "full" = as is. Photos are never upscaled: one whose long side is below the size is left out of
that set (and listed).
"""

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classsr_cli.errors import OVERWRITE_HINT, DataError, InputError, OutputError
from classsr_cli.files import atomic_open

DATA_ENV = "CLASSSR_DATA"
DEFAULT_DATA_ROOT = Path("datasets")
SR_SCALE = 4
NAMED_SIZES = {"2k": 2048, "4k": 4096, "8k": 8192}
# DIV8K ids of the paper's test sets and the factor each is reduced by
DIV8K_SETS = {
    "2k": ("Test2K", range(1201, 1301), 0.25),
    "4k": ("Test4K", range(1301, 1401), 0.5),
    "full": ("Test8K", range(1401, 1501), 1.0),
}


@dataclass(frozen=True)
class SetSpec:
    name: str  # folder name: Test2K, Test4K, TestFull, Test1000 ...
    long_side: int | None = None  # resize so the long side is this (never up); None = keep the size
    factor: float | None = None  # or reduce by this factor (DIV8K mode)
    ids: range | None = None  # DIV8K mode: which image numbers belong to the set


def parse_sizes(text: str) -> list[str]:
    sizes = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not sizes:
        raise DataError("--sizes needs at least one of 2k, 4k, 8k, full or a number of pixels")
    for size in sizes:
        if size not in NAMED_SIZES and size != "full" and not (size.isdigit() and int(size) >= 4 * SR_SCALE):
            raise DataError(
                f"unknown size '{size}': use 2k, 4k, 8k, full or a long side in pixels (at least 16)"
            )
    if len(set(sizes)) != len(sizes):
        raise DataError(f"--sizes repeats a size: {text}")
    return sizes


def div8k_number(path: Path) -> int | None:
    """The DIV8K image number of a file named like 1401.png (or 1401x4.png), else None."""
    match = re.fullmatch(r"(\d{4})(x\d)?", path.stem)
    return int(match.group(1)) if match else None


def plan_sets(photos: Sequence[Path], sizes: Sequence[str]) -> tuple[str, list[SetSpec]]:
    """('div8k' or 'generic', the sets to build). DIV8K mode when any photo is numbered 1201-1500."""
    if any((number := div8k_number(p)) is not None and 1201 <= number <= 1500 for p in photos):
        specs = []
        for size in sizes:
            if size not in DIV8K_SETS:
                raise DataError(
                    f"size '{size}' has no DIV8K test set: use 2k (Test2K), 4k (Test4K), full (Test8K)"
                )
            name, ids, factor = DIV8K_SETS[size]
            specs.append(SetSpec(name, factor=factor, ids=ids))
        return "div8k", specs
    specs = []
    for size in sizes:
        if size == "full":
            specs.append(SetSpec("TestFull"))
        elif size in NAMED_SIZES:
            specs.append(SetSpec(f"Test{size.upper()}", long_side=NAMED_SIZES[size]))
        else:
            specs.append(SetSpec(f"Test{int(size)}", long_side=int(size)))
    return "generic", specs


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG, written to a temporary name and renamed so no half-written file is ever seen."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise OutputError(f"cannot encode {path.name} as PNG")
    try:
        with atomic_open(path) as handle:
            handle.write(encoded.tobytes())
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error}") from None


def _set_hr(photo: np.ndarray, spec: SetSpec) -> np.ndarray | None:
    """The photo at the set's size (before cropping), or None when it is smaller than that size."""
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8

    if spec.factor is not None:  # DIV8K: imresize(photo, factor), MATLAB's ceil sizes
        return photo if spec.factor == 1 else matlab_uint8(imresize(photo.astype(np.float32), spec.factor))
    height, width = photo.shape[:2]
    long = max(height, width)
    if spec.long_side is None or long == spec.long_side:
        return photo
    if long < spec.long_side:
        return None
    ratio = spec.long_side / long
    shape = (max(1, round(height * ratio)), max(1, round(width * ratio)))
    return matlab_uint8(imresize(photo.astype(np.float32), output_shape=shape))


def _check_earlier_sets(out: Path, chosen_by_set: dict[str, list[Path]], overwrite: bool) -> None:
    """Refuse (or, with `overwrite`, clear) what earlier runs left in the sets' folders that this run would
    replace or leave stale: pairs older than their photo, images of photos not given now (each set's photos
    in `chosen_by_set`)."""
    for name, photos in chosen_by_set.items():
        chosen = {f"{photo.stem}.png": photo for photo in photos}
        found = [path for folder in ("HR", "LR") for path in sorted((out / name / folder).glob("*.png"))]
        stale = [path for path in found if path.name not in chosen]
        older = [
            path
            for path in found
            if path.name in chosen and path.stat().st_mtime < chosen[path.name].stat().st_mtime
        ]
        if not (stale or older):
            continue
        if overwrite:
            for path in stale + older:
                path.unlink()
            continue
        problems = []
        if older:
            problems.append(f"{_names(older)} older than their photo (they would be replaced)")
        if stale:
            problems.append(f"{_names(stale)} of photos not in the source (a benchmark would score them)")
        raise OutputError(
            f"{out / name} holds {'; and '.join(problems)}: {OVERWRITE_HINT}, or choose another folder"
        )


def _names(paths: Sequence[Path]) -> str:
    names = sorted({f"{path.parent.name}/{path.name}" for path in paths})
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def make_testsets(
    src: Path,
    out: Path,
    sizes: Sequence[str] = ("2k", "4k", "full"),
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Build the test sets; returns {"mode", "sets": {name: {"images", "hr", "lr", "skipped", ...}}, ...}.

    A pair whose HR and LR files are newer than the source photo is kept from an earlier run. Before any
    work, OutputError if a set's folders hold pairs older than their photo (they would be replaced) or
    images of photos not in `src` (a benchmark would score them), unless `overwrite`: then those pairs are
    made again and those images removed. A set's folders are made only when it gets an image.
    """
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8
    from classsr_cli.imaging.photos import PHOTO_SUFFIXES, list_photos, read_rgb8
    from classsr_cli.progress import progress_bar

    started = time.perf_counter()
    log = log or (lambda message: None)
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise InputError(f"source folder not found: {src}")
    photos = list_photos(src)
    if not photos:
        raise InputError(f"no photos in {src} (looked for {', '.join(PHOTO_SUFFIXES)})")
    mode, specs = plan_sets(photos, sizes)
    kind = "DIV8K test sets" if mode == "div8k" else "test sets by long side"
    log(f"{kind}: {', '.join(spec.name for spec in specs)}")

    work = []  # (spec, photo) pairs
    chosen_by_set: dict[str, list[Path]] = {}  # set name -> its photos
    report = {}
    for spec in specs:
        chosen = [p for p in photos if spec.ids is None or div8k_number(p) in spec.ids]
        report[spec.name] = {
            "images": 0,
            "kept": 0,
            "hr": str(out / spec.name / "HR"),
            "lr": str(out / spec.name / "LR"),
            "skipped": [],
            "too_small": [],
            "sources": len(chosen),
        }
        if spec.long_side:
            report[spec.name]["long_side"] = spec.long_side
        if spec.factor:
            report[spec.name]["factor"] = spec.factor
        if not chosen:
            log(f"{spec.name}: no photos for it in {src}")
        work.extend((spec, p) for p in chosen)
        chosen_by_set[spec.name] = chosen
    _check_earlier_sets(out, chosen_by_set, overwrite)
    # photo by photo, so that a photo in several sets is decoded once
    order = {path: position for position, path in enumerate(photos)}
    work.sort(key=lambda item: order[item[1]])

    skipped_files: dict[str, str] = {}
    with progress_bar(disable=not show_progress) as progress:
        task = progress.add_task("making test sets", total=len(work))
        current: list = [None, None]  # the photo being worked on: [path, pixels or its read error]

        def build(spec: SetSpec, photo_path: Path) -> None:
            entry = report[spec.name]
            hr_path = out / spec.name / "HR" / f"{photo_path.stem}.png"
            lr_path = out / spec.name / "LR" / f"{photo_path.stem}.png"
            source_time = photo_path.stat().st_mtime
            if all(p.exists() and p.stat().st_mtime >= source_time for p in (hr_path, lr_path)):
                entry["images"] += 1
                entry["kept"] += 1
                return
            if current[0] != photo_path:
                try:
                    current[:] = [photo_path, read_rgb8(photo_path)]
                except InputError as error:
                    current[:] = [photo_path, error]
                    skipped_files[photo_path.name] = str(error)
                    progress.console.print(f"skipped {error}", style="yellow", markup=False, highlight=False)
            if isinstance(current[1], InputError):
                entry["skipped"].append(photo_path.name)
                return
            hr = _set_hr(current[1], spec)
            if hr is None or min(hr.shape[:2]) < SR_SCALE:
                entry["too_small"].append(photo_path.name)
                return
            height, width = hr.shape[0] // SR_SCALE * SR_SCALE, hr.shape[1] // SR_SCALE * SR_SCALE
            hr = np.ascontiguousarray(hr[:height, :width])
            lr_shape = (height // SR_SCALE, width // SR_SCALE)
            lr = matlab_uint8(imresize(hr.astype(np.float32), output_shape=lr_shape))
            hr_path.parent.mkdir(parents=True, exist_ok=True)
            lr_path.parent.mkdir(parents=True, exist_ok=True)
            _write_png(hr_path, hr)
            _write_png(lr_path, lr)
            entry["images"] += 1

        for spec, photo_path in work:
            build(spec, photo_path)
            progress.advance(task)
    for name, entry in report.items():
        if entry["too_small"]:
            log(f"{name}: left out {len(entry['too_small'])} photos smaller than its size (never upscaled)")
    return {
        "mode": mode,
        "out": str(out),
        "sets": report,
        "skipped": sorted(skipped_files),
        "skipped_reasons": skipped_files,
        "seconds": round(time.perf_counter() - started, 2),
    }


def resolve_data_root(data_root: Path | str | None = None) -> Path:
    """Where named datasets live: the given root, else $CLASSSR_DATA, else ./datasets."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else DEFAULT_DATA_ROOT


def find_dataset(name_or_path: str | Path, data_root: Path | str | None = None) -> Path:
    """A dataset folder from a path, or a name such as Test8K looked up (ignoring case) under the root."""
    text = str(name_or_path)
    direct = Path(text).expanduser()
    if direct.is_dir():
        return direct
    root = resolve_data_root(data_root)
    candidate = root / text
    if candidate.is_dir():
        return candidate
    if root.is_dir() and "/" not in text and os.sep not in text:
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.lower() == text.lower():
                return child
    source = (
        "--data-root" if data_root else (f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "the default root")
    )
    raise DataError(
        f"dataset '{text}' not found: looked for the folder {direct} and for {candidate} under {source}; "
        f"make it with `classsr make-testsets`, or set --data-root or {DATA_ENV}"
    )
