"""One photo's training pairs, made in a worker process of prepare-data: the photo shrunk by each scale
factor (MATLAB bicubic), cropped to a multiple of the SR scale and reduced to its LR image; its LR
sub-images rated by the ranking model; the images and the photo's part file written (atomically), and read
back by a rerun that resumes. `prepare.py` runs the photos and writes the index and meta.json.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classsr_cli.data.ranking import RankModel, make_ranker, rank_subimages
from classsr_cli.errors import InputError
from classsr_cli.files import atomic_open


def subimage_positions(length: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets of windows of `patch` every `stride`, plus one flush with the end if the grid misses."""
    if length < patch:
        return np.zeros(0, dtype=np.int64)
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return np.asarray(starts, dtype=np.int64)


def photo_key(path: Path) -> str:
    """A file-system-safe, collision-free name for a photo's files: its stem plus a hash of its file name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:60] or "photo"
    return f"{stem}-{hashlib.sha1(path.name.encode()).hexdigest()[:8]}"


def scale_tag(scale: float) -> str:
    """A scale factor as its files name it: 0.9 -> "s0.900"."""
    return f"s{scale:.3f}"


@dataclass(frozen=True)
class PhotoJob:
    """What a worker needs to make one photo's pairs (picklable): the photo, its key, the output folder and
    the run's settings; `fingerprint` is recorded in the part file (`load_part` reuses only a match)."""

    source: str
    key: str
    out: str
    scales: tuple[float, ...]
    sr_scale: int
    patch: int
    stride: int
    rank: RankModel
    fingerprint: str
    noise_sigma: float = 0.0  # > 0: a denoising set (sr_scale 1), ranked on noisy sub-images


_RANKERS: dict = {}  # one ranker per process and model, loaded on first use


def ranker_for(rank: RankModel, patch: int, sr_scale: int, noise_sigma: float = 0.0):
    """The ranker of these settings, loaded once per process (`ranking.make_ranker`)."""
    cache_key = (rank.identity, patch, sr_scale, noise_sigma)
    if cache_key not in _RANKERS:
        _RANKERS[cache_key] = make_ranker(rank, patch, sr_scale, noise_sigma)
    return _RANKERS[cache_key]


def init_worker(threads: int) -> None:
    """A worker process's set-up: `threads` torch threads; Ctrl-C left to the parent."""
    import signal

    import torch

    torch.set_num_threads(threads)
    # Ctrl-C is handled once, by the parent (which cancels the queue); workers finish their photo quietly
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_photo(job: PhotoJob) -> dict:
    """Scale, reduce and rank one photo; write its images and part file. Returns a status dict."""
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8
    from classsr_cli.imaging.photos import read_rgb8

    name = Path(job.source).name
    try:
        photo = read_rgb8(Path(job.source))
    except InputError as error:
        return {"key": job.key, "name": name, "status": "skipped", "reason": str(error)}
    except MemoryError:
        return {"key": job.key, "name": name, "status": "skipped", "reason": f"{name}: too large for memory"}
    ranker = ranker_for(job.rank, job.patch, job.sr_scale, job.noise_sigma)
    out = Path(job.out)
    hr_patch = job.patch * job.sr_scale
    scale_ids, all_y, all_x, all_psnr, shapes = [], [], [], [], []
    photo_float = None
    for scale_id, factor in enumerate(job.scales):
        if factor == 1.0:
            scaled = photo
        else:
            photo_float = photo.astype(np.float32) if photo_float is None else photo_float
            scaled = matlab_uint8(imresize(photo_float, factor))
        height = scaled.shape[0] // job.sr_scale * job.sr_scale
        width = scaled.shape[1] // job.sr_scale * job.sr_scale
        if height < hr_patch or width < hr_patch:
            shapes.append((0, 0))
            continue
        hr = np.ascontiguousarray(scaled[:height, :width])
        lr_shape = (height // job.sr_scale, width // job.sr_scale)
        # denoising (scale 1): the clean image is the input too; the noise is added when it is used
        lr = hr if job.sr_scale == 1 else matlab_uint8(imresize(hr.astype(np.float32), output_shape=lr_shape))
        ys = subimage_positions(lr.shape[0], job.patch, job.stride)
        xs = subimage_positions(lr.shape[1], job.patch, job.stride)
        psnr = rank_subimages(lr, hr, ys, xs, job.patch, job.sr_scale, ranker)
        tag = scale_tag(factor)
        with atomic_open(out / "images" / f"{job.key}_{tag}_hr.npy") as handle:
            np.save(handle, hr)
        if job.sr_scale > 1:  # at scale 1 the HR file serves as the input as well
            with atomic_open(out / "images" / f"{job.key}_{tag}_lr.npy") as handle:
                np.save(handle, lr)
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        scale_ids.append(np.full(grid_y.size, scale_id, dtype=np.uint8))
        all_y.append(grid_y.ravel().astype(np.int32))
        all_x.append(grid_x.ravel().astype(np.int32))
        all_psnr.append(psnr)
        shapes.append((height, width))
    if not all_psnr:
        return {
            "key": job.key,
            "name": name,
            "status": "skipped",
            "reason": f"{name}: too small ({photo.shape[1]}x{photo.shape[0]}); "
            f"needs {hr_patch}x{hr_patch} at some scale",
        }
    # the part file is written last: its presence means every file of this photo is complete
    part = {
        "fingerprint": np.array(job.fingerprint),
        "photo_shape": np.array(photo.shape[:2], dtype=np.int64),
        "hr_shapes": np.array(shapes, dtype=np.int64),
        "scale": np.concatenate(scale_ids),
        "y": np.concatenate(all_y),
        "x": np.concatenate(all_x),
        "psnr": np.concatenate(all_psnr),
    }
    with atomic_open(out / "parts" / f"{job.key}.npz") as handle:
        np.savez(handle, **part)
    return {"key": job.key, "name": name, "status": "done"}


def load_part(out: Path, job: PhotoJob) -> dict | None:
    """A finished photo's results if they were made with the same settings and its files are all there."""
    path = out / "parts" / f"{job.key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            part = {name: data[name] for name in data.files}
        if str(part["fingerprint"]) != job.fingerprint:
            return None
        for factor, (height, width) in zip(job.scales, part["hr_shapes"], strict=True):
            if height == 0:
                continue
            tag = scale_tag(factor)
            hr = np.load(out / "images" / f"{job.key}_{tag}_hr.npy", mmap_mode="r")
            lr = np.load(out / "images" / f"{job.key}_{tag}_{input_kind(job.sr_scale)}.npy", mmap_mode="r")
            if hr.shape != (height, width, 3) or lr.shape != (
                height // job.sr_scale,
                width // job.sr_scale,
                3,
            ):
                return None
        return part
    except (OSError, ValueError, KeyError):  # missing, truncated or foreign: recompute
        return None


def input_kind(sr_scale: int) -> str:
    """Which stored image is the network's input: the LR image, or at scale 1 (denoising) the HR one."""
    return "lr" if sr_scale > 1 else "hr"
