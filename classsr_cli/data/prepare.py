"""prepare-data: photos -> scaled HR/LR pairs, a sub-image index ranked by restoration difficulty, M classes.

For denoising (`task="denoise"`, the paper's 4.4) the SR scale is 1 and the "LR" image is the clean photo
itself (one file serves as both): training adds Gaussian noise of `noise_sigma` (0-255 scale) on the fly, and
the ranking model sees each sub-image with seeded noise of that sigma.

The paper's recipe (Sec. 3.1, 4.1): every photo is shrunk by 1.0, 0.9, ..., 0.6 (MATLAB bicubic), cropped to
a multiple of the SR scale and reduced x4 to its LR image; 32x32 LR sub-images at stride 16 are cut from
every LR image; each is super-resolved by a ranking model and the PSNR against its HR sub-image measures how
hard it is; the ranked sub-images are cut into M classes of equal size (class 0 = simple = highest PSNR).

On disk (OUT/):
  images/<key>_s<scale>_hr.npy, _lr.npy   the scaled HR and LR images, uint8 (H, W, 3), memory-mappable
  parts/<key>.npz                         one photo's sub-image positions and PSNRs (lets a rerun resume)
  index.npy                               structured array, one row per sub-image: INDEX_DTYPE
  meta.json                               arguments, photos and their files, split, thresholds, counts
Sub-images are never written out one by one: the dataset crops them from the memory-mapped images.
`pairs.py` makes one photo's images and part (in a worker process), `ranking.py` rates the sub-images and
cuts the classes; this module runs the photos and writes the index and meta.json.
"""

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from classsr_cli.data.noise import DEFAULT_NOISE_SIGMA
from classsr_cli.data.pairs import (
    PhotoJob,
    init_worker,
    input_kind,
    load_part,
    photo_key,
    process_photo,
    ranker_for,
    scale_tag,
    subimage_positions,
)
from classsr_cli.data.ranking import (
    BICUBIC,
    BLUR,
    PSNR_CAP,
    RankModel,
    assign_classes,
    classes_from_thresholds,
    resolve_rank_model,
)
from classsr_cli.errors import DataError, InputError
from classsr_cli.files import atomic_open, write_json

FORMAT = "classsr-prepared"
FORMAT_VERSION = 1
DEFAULT_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6)
SPLIT_TRAIN, SPLIT_VAL = 0, 1
SPLIT_NAMES = {SPLIT_TRAIN: "train", SPLIT_VAL: "val"}
INDEX_DTYPE = np.dtype(
    [
        ("image", "<i4"),  # position in meta["images"]
        ("scale", "u1"),  # position in meta["arguments"]["scales"]
        ("y", "<i4"),  # top-left corner of the LR sub-image; the HR one is at (y, x) * SR scale
        ("x", "<i4"),
        ("psnr", "<f4"),  # dB, RGB, of the ranking model's 8-bit output against the HR sub-image
        ("cls", "i1"),  # 0 = simple (highest PSNR) ... M-1 = hard
        ("split", "u1"),  # SPLIT_TRAIN or SPLIT_VAL
    ]
)


# -- small pure pieces ----------------------------------------------------------------------------------


def parse_scales(text: str) -> tuple[float, ...]:
    """'1.0,0.9,0.8' -> (1.0, 0.9, 0.8); each in (0, 1], no repeats."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DataError(f"--scales takes numbers separated by commas, got '{text}'") from None
    check_scales(scales)
    return scales


def check_scales(scales: Sequence[float]) -> None:
    if not scales:
        raise DataError("give at least one scale factor")
    for scale in scales:
        if not 0 < scale <= 1:
            raise DataError(f"scale factors must lie in (0, 1] (HR images are never upscaled), got {scale}")
    if len(set(scales)) != len(scales):
        raise DataError(f"scale factors repeat: {', '.join(map(str, scales))}")


def choose_val_photos(count: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded choice of whole photos for validation: a boolean mask over `count` photos (in sorted order).

    At least one photo when the fraction is above 0, and always at least one photo left for training.
    """
    mask = np.zeros(count, dtype=bool)
    if fraction <= 0 or count < 2:
        return mask
    wanted = min(count - 1, max(1, round(fraction * count)))
    mask[np.random.default_rng(seed).choice(count, size=wanted, replace=False)] = True
    return mask


# -- the whole run --------------------------------------------------------------------------------------


def _fingerprint(
    source: Path, scales, sr_scale: int, patch: int, stride: int, rank: RankModel, noise_sigma: float = 0.0
) -> str:
    """Everything a photo's part depends on; a rerun reuses a part only when this is unchanged."""
    stat = source.stat()
    denoise = {"noise_sigma": noise_sigma} if noise_sigma > 0 else {}
    return json.dumps(
        {
            **denoise,
            "format": FORMAT_VERSION,
            "source": [source.name, stat.st_size, stat.st_mtime_ns],
            "scales": list(scales),
            "sr_scale": sr_scale,
            "patch": patch,
            "stride": stride,
            "rank": rank.identity,
        },
        sort_keys=True,
    )


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def prepare_data(
    src: Path,
    out: Path,
    scales: Sequence[float] = DEFAULT_SCALES,
    sr_scale: int | None = None,
    patch: int = 32,
    stride: int = 16,
    classes: int = 3,
    rank_model: str | None = None,
    val_fraction: float = 0.1,
    workers: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    task: str = "upscale",
    noise_sigma: float = DEFAULT_NOISE_SIGMA,
    overwrite: bool = False,
) -> dict:
    """Build (or resume) a prepared training folder at `out` from the photos in `src`; return a summary.

    A folder that already holds a finished set made from other photos' folder or with other settings is
    refused (DataError naming them) unless `overwrite`: its sub-images would change under the runs and
    relabelled folders that use them.

    sr_scale: LR = HR reduced by it (None: 4, or 1 for denoising). task "denoise" (scale 1) ranks the clean
    sub-images with Gaussian noise of `noise_sigma` (0-255 scale) added; training adds fresh noise of that
    sigma on the fly. Raises DataError or InputError on bad input.

    The summary: images, subimages, class_counts (training split), psnr_thresholds, skipped (file names),
    and more (val_images, train/val sub-images, val_class_counts, rank_model, resumed, seconds, out).
    """
    started = time.perf_counter()
    log = log or (lambda message: None)
    src, out = Path(src).expanduser(), Path(out).expanduser()
    scales = tuple(float(s) for s in scales)
    check_scales(scales)
    from classsr_cli.models import TASKS

    if task not in TASKS:
        raise DataError(f"--task must be {' or '.join(TASKS)}, got '{task}'")
    if sr_scale is None:
        sr_scale = 1 if task == "denoise" else 4
    if task == "denoise":
        if sr_scale != 1:
            raise DataError(f"denoising keeps the size: --scale must be 1 (or left out), got {sr_scale}")
        if not 0 < noise_sigma <= 255:
            raise DataError(f"--noise-sigma must lie in (0, 255] (0-255 scale), got {noise_sigma}")
    else:
        noise_sigma = 0.0
        if sr_scale < 2:
            raise DataError(f"--scale must be at least 2 for upscaling, got {sr_scale}")
    if patch < 4 or stride < 1:
        raise DataError(f"--patch must be at least 4 and --stride at least 1, got {patch} and {stride}")
    if not 1 <= classes <= 5:
        raise DataError(f"--classes must be 1 to 5, got {classes}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if not src.is_dir():
        raise InputError(f"source folder not found: {src}")
    from classsr_cli.imaging.photos import PHOTO_SUFFIXES, list_photos

    photos = list_photos(src)
    if not photos:
        raise InputError(f"no photos in {src} (looked for {', '.join(PHOTO_SUFFIXES)})")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    rank = resolve_rank_model(rank_model, task)
    noisy = f" on sub-images with Gaussian noise of sigma {noise_sigma:g}" if noise_sigma else ""
    log(f"ranking sub-images by the PSNR of: {rank.label}{noisy}")
    if rank.kind not in (BICUBIC, BLUR):
        ranker_for(rank, patch, sr_scale, noise_sigma)  # fail fast on bad weights
    arguments = {
        "scales": list(scales),
        "task": task,
        "noise_sigma": noise_sigma if task == "denoise" else None,
        "scale": sr_scale,
        "patch": patch,
        "stride": stride,
        "classes": classes,
        "rank_model": rank.name,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    if not overwrite:
        _refuse_other_settings(out, {"src": str(src.resolve()), **arguments})
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    for leftover in [*(out / "images").glob(".*.tmp"), *(out / "parts").glob(".*.tmp")]:
        leftover.unlink()  # half-written files of a run that was killed

    jobs = [
        PhotoJob(
            str(p),
            photo_key(p),
            str(out),
            scales,
            sr_scale,
            patch,
            stride,
            rank,
            _fingerprint(p, scales, sr_scale, patch, stride, rank, noise_sigma),
            noise_sigma,
        )
        for p in photos
    ]
    parts: dict[str, dict] = {}
    for job in jobs:
        part = load_part(out, job)
        if part is not None:
            parts[job.key] = part
    resumed = len(parts)
    if resumed:
        log(f"resuming: {resumed} of {len(jobs)} photos already done")
    pending = [job for job in jobs if job.key not in parts]
    skipped = _run_jobs(pending, workers, show_progress, resumed, len(jobs))
    for job in pending:
        if job.key not in skipped:
            part = load_part(out, job)
            if part is None:
                raise DataError(
                    f"the results of {Path(job.source).name} vanished from {out / 'parts'} while running"
                )
            parts[job.key] = part

    summary = _finish(out, jobs, parts, skipped, arguments, rank)
    summary["resumed"] = resumed
    summary["disk_bytes"] = disk_bytes(out)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["seconds"] = summary["seconds"]
    write_json(meta_path, meta)
    return summary


def _run_jobs(
    jobs: list[PhotoJob], workers: int, show_progress: bool, done: int, total: int
) -> dict[str, dict]:
    """Process photos (in parallel processes when workers > 1); returns the skipped ones by key."""
    from classsr_cli.progress import progress_bar

    skipped: dict[str, dict] = {}
    with progress_bar(disable=not show_progress) as progress:
        task = progress.add_task("preparing photos", total=total, completed=done)

        def record(result: dict) -> None:
            if result["status"] == "skipped":
                skipped[result["key"]] = result
                progress.console.print(
                    f"skipped {result['reason']}", style="yellow", markup=False, highlight=False
                )
            progress.advance(task)

        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                record(process_photo(job))
            return skipped
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        workers = min(workers, len(jobs))
        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn, not fork: torch and libvips keep threads that a forked child must not inherit
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(threads,))
        try:
            futures = [pool.submit(process_photo, job) for job in jobs]
            for future in as_completed(futures):
                record(future.result())
        except BrokenProcessPool:
            raise DataError(
                "a worker died (out of memory?): rerun with fewer --workers (done photos are kept)"
            ) from None
        except BaseException:  # Ctrl-C, an error: the workers stop now, not after their photo
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return skipped


def _stop_workers(pool) -> None:
    """End the pool's worker processes at once: a photo's files are written under temporary names and
    renamed when complete, so a photo cut short leaves nothing a rerun would take for done."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14 and later
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _refuse_other_settings(out: Path, wanted: dict) -> None:
    """DataError if `out` holds a finished prepared set whose recorded arguments differ from `wanted`."""
    try:
        recorded = json.loads((out / "meta.json").read_text())["arguments"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no finished set there (or not one of ours: the checks above and below apply)
    differ = [
        f"{key} {recorded.get(key)} (now {value})"
        for key, value in wanted.items()
        if recorded.get(key) != value
    ]
    if differ:
        raise DataError(
            f"{out} holds a prepared set made with other settings: {'; '.join(differ)}; pass --overwrite to "
            "prepare it again there (runs and relabelled folders using it would change) or choose another "
            "folder"
        )


def _finish(out, jobs, parts, skipped, arguments: dict, rank: RankModel) -> dict:
    """Rank all sub-images (from every part, old and new), split, classify; write index.npy and meta.json.

    `arguments`: the run's settings as meta.json records them (scales, scale, patch, classes, ...)."""
    scales, sr_scale, patch = arguments["scales"], arguments["scale"], arguments["patch"]
    classes = arguments["classes"]
    kept = [job for job in jobs if job.key in parts]
    if not kept:
        raise DataError("no photo could be used: every one was unreadable or too small")
    val_mask = choose_val_photos(len(kept), arguments["val_fraction"], arguments["seed"])
    blocks, images = [], []
    for image_id, job in enumerate(kept):
        part = parts[job.key]
        block = np.zeros(len(part["psnr"]), dtype=INDEX_DTYPE)
        block["image"] = image_id
        block["scale"] = part["scale"]
        block["y"], block["x"], block["psnr"] = part["y"], part["x"], part["psnr"]
        block["split"] = SPLIT_VAL if val_mask[image_id] else SPLIT_TRAIN
        blocks.append(block)
        photo_height, photo_width = (int(v) for v in part["photo_shape"])
        entries = []
        for scale_id, (factor, (height, width)) in enumerate(zip(scales, part["hr_shapes"], strict=True)):
            tag, has = scale_tag(factor), height > 0
            entries.append(
                {
                    "scale": factor,
                    "hr": f"images/{job.key}_{tag}_hr.npy" if has else None,
                    "lr": f"images/{job.key}_{tag}_{input_kind(sr_scale)}.npy" if has else None,
                    "hr_size": [int(width), int(height)],
                    "lr_size": [int(width) // sr_scale, int(height) // sr_scale],
                    "subimages": int(np.count_nonzero(part["scale"] == scale_id)),
                }
            )
        images.append(
            {
                "id": image_id,
                "name": Path(job.source).name,
                "source": str(Path(job.source).resolve()),
                "key": job.key,
                "width": photo_width,
                "height": photo_height,
                "split": SPLIT_NAMES[SPLIT_VAL if val_mask[image_id] else SPLIT_TRAIN],
                "scales": entries,
            }
        )
    index = np.concatenate(blocks)
    train = index["split"] == SPLIT_TRAIN
    labels, thresholds = assign_classes(index["psnr"][train], classes)
    index["cls"][train] = labels
    index["cls"][~train] = classes_from_thresholds(index["psnr"][~train], thresholds)
    class_counts = np.bincount(index["cls"][train], minlength=classes).tolist()
    val_class_counts = np.bincount(index["cls"][~train], minlength=classes).tolist()
    with atomic_open(out / "index.npy") as handle:
        np.save(handle, index)
    _remove_stale_files(out, {job.key for job in kept}, images)

    skipped_list = [
        {"name": Path(job.source).name, "reason": skipped[job.key]["reason"]}
        for job in jobs
        if job.key in skipped
    ]
    from classsr_cli import __version__

    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "classsr_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arguments": {"src": str(Path(jobs[0].source).parent.resolve()), **arguments},
        "rank_model": {**asdict(rank), "label": rank.label},
        "patch_lr": patch,
        "patch_hr": patch * sr_scale,
        "psnr_cap": PSNR_CAP,
        "index": {"file": "index.npy", "fields": list(INDEX_DTYPE.names), "splits": SPLIT_NAMES},
        "images": images,
        "skipped": skipped_list,
        "psnr_thresholds": thresholds,
        "class_counts": class_counts,
        "val_class_counts": val_class_counts,
        "subimages": {"train": int(train.sum()), "val": int((~train).sum())},
        "seconds": None,
    }
    write_json(out / "meta.json", meta)
    return {
        "images": len(kept),
        "subimages": int(len(index)),
        "class_counts": class_counts,
        "psnr_thresholds": [round(t, 4) for t in thresholds],
        "skipped": [entry["name"] for entry in skipped_list],
        "skipped_reasons": {entry["name"]: entry["reason"] for entry in skipped_list},
        "train_images": int((~val_mask).sum()),
        "val_images": int(val_mask.sum()),
        "train_subimages": int(train.sum()),
        "val_subimages": int((~train).sum()),
        "val_class_counts": val_class_counts,
        "rank_model": rank.name,
        "task": arguments["task"],
        "out": str(out),
    }


def _remove_stale_files(out: Path, keys: set[str], images: list[dict]) -> None:
    """Drop images and parts of photos no longer in the source (or of scales no longer asked for)."""
    wanted = {
        Path(entry[kind]).name
        for image in images
        for entry in image["scales"]
        for kind in ("hr", "lr")
        if entry[kind]
    }
    for path in (out / "images").glob("*.npy"):
        if path.name not in wanted:
            path.unlink()
    for path in (out / "parts").glob("*.npz"):
        if path.stem not in keys:
            path.unlink()


def disk_bytes(out: Path) -> int:
    return sum(path.stat().st_size for path in Path(out).rglob("*") if path.is_file())


__all__ = [
    "DEFAULT_SCALES",
    "INDEX_DTYPE",
    "SPLIT_TRAIN",
    "SPLIT_VAL",
    "assign_classes",
    "choose_val_photos",
    "classes_from_thresholds",
    "parse_scales",
    "prepare_data",
    "resolve_rank_model",
    "subimage_positions",
]
