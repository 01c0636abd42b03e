"""How hard each sub-image is to restore, and the classes that follow (the paper's 3.1): a ranking model
restores every LR sub-image, the PSNR of its output against the HR sub-image rates it, and the rated
sub-images are cut into M classes of equal size (class 0 = simple = highest PSNR).

Ranking models: MATLAB bicubic (`bicubic`), or for denoising a Gaussian blur (`blur`), a family's shipped
base network, or a weights file; `prepare.py` runs them over every photo and writes what they decide.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classsr_cli.errors import ClasssrError, DataError, ModelError
from classsr_cli.metrics import psnr_per_subimage

# an exact reconstruction (flat sub-images) has infinite PSNR; a finite cap keeps sorting and JSON sane
PSNR_CAP = 100.0
# the strongest shipped base network ranks best (the paper used MSRResNet, models.PREFERENCE); bicubic when
# none is shipped
BICUBIC = "bicubic"
# the denoising stand-in for bicubic when no denoiser is shipped: a Gaussian blur (sigma 1 px) of the noisy
# sub-image, which restores smooth sub-images well and textured ones badly
BLUR = "blur"
BLUR_SIGMA = 1.0


def assign_classes(psnr: np.ndarray, classes: int) -> tuple[np.ndarray, list[float]]:
    """Rank by PSNR (highest first) and cut into `classes` groups of equal size (differing by at most one).

    Returns the class of each sub-image (0 = simple) and the classes - 1 thresholds, falling: threshold k lies
    halfway between the last PSNR of class k and the first of class k + 1. Ties are broken by position, so
    the sizes are exact even when many sub-images share one PSNR.
    """
    count = len(psnr)
    if count < classes:
        raise DataError(f"only {count} training sub-images for {classes} classes: add photos or scales")
    order = np.argsort(-psnr.astype(np.float64), kind="stable")
    labels = np.empty(count, dtype=np.int8)
    bounds = [k * count // classes for k in range(classes + 1)]
    thresholds = []
    for k in range(classes):
        labels[order[bounds[k] : bounds[k + 1]]] = k
        if k < classes - 1:
            last, first = psnr[order[bounds[k + 1] - 1]], psnr[order[bounds[k + 1]]]
            thresholds.append((float(last) + float(first)) / 2)
    return labels, thresholds


def classes_from_thresholds(psnr: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """The class of each PSNR given falling thresholds: the number of thresholds it falls below."""
    if not len(thresholds):
        return np.zeros(len(psnr), dtype=np.int8)
    below = psnr.astype(np.float64)[:, None] < np.asarray(thresholds, dtype=np.float64)[None, :]
    return below.sum(axis=1).astype(np.int8)


# -- ranking models -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankModel:
    """What rates the sub-images: `bicubic` (or `blur` for denoising), a family's shipped base network, or a
    weights file."""

    kind: str  # "bicubic", "blur", "family" or "file"
    name: str  # "bicubic", "blur", the family name, or the file path
    identity: str  # changes whenever its outputs may change (resumed results are reused only if equal)

    @property
    def label(self) -> str:
        if self.kind == "family":
            return f"{self.name} (shipped base network, else its shipped ClassSR model's hardest branch)"
        return self.name


def resolve_rank_model(choice: str | None, task: str = "upscale") -> RankModel:
    """`bicubic` (upscale) or `blur` (denoise), a family name, or a weights file; None picks the best shipped
    base network of the task, else bicubic or blur."""
    from classsr_cli.models import PREFERENCE, list_families

    families = list_families(task)
    simple = BICUBIC if task == "upscale" else BLUR
    if choice is None:
        try:
            from classsr_cli.weights import shipped_families

            shipped = set(shipped_families("base"))
        except (
            ImportError,
            ClasssrError,
        ):  # no weights module or an unreadable manifest: bicubic needs neither
            shipped = set()
        for family in PREFERENCE[task]:
            if family in shipped:
                return _family_rank_model(family)
        return RankModel(simple, simple, simple)
    text = choice.strip()
    if text.lower() == simple:
        return RankModel(simple, simple, simple)
    if text.lower() in families:
        return _family_rank_model(text.lower())
    path = Path(text).expanduser()
    if not path.is_file():
        raise DataError(
            f"--rank-model '{text}' is neither {simple}, a family of the {task} task "
            f"({', '.join(families)}) nor a file"
        )
    stat = path.stat()
    return RankModel("file", str(path.resolve()), f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")


def _family_rank_model(family: str) -> RankModel:
    """A family's shipped base network, or where none is shipped (SRResNet) its shipped ClassSR model's
    hardest branch, as `classsr bench` takes it. DataError where the family ships neither."""
    identity = f"family:{family}"
    try:
        from classsr_cli.weights import shipped_base_entry

        entry = shipped_base_entry(family)
    except (ImportError, ClasssrError):  # loading reports the real problem; the identity only guards resuming
        return RankModel("family", family, identity)
    if entry is None:
        raise DataError(
            f"--rank-model {family}: no {family} weights are shipped; "
            "give a weights file as --rank-model FILE"
        )
    kind = "" if entry.get("kind") == "base" else f"{entry.get('kind')}:"
    return RankModel("family", family, f"{identity}:{kind}{entry.get('sha256', '')}")


class BicubicRanker:
    """The MATLAB bicubic x`scale` upscale of each LR sub-image on its own, as a batched matrix product."""

    batch = 64  # small batches reuse the allocator's memory instead of faulting in fresh pages

    def __init__(self, patch: int, scale: int):
        import torch

        from classsr_cli.imaging.bicubic import resize_matrix

        self.matrix = torch.from_numpy(resize_matrix(patch, patch * scale, float(scale))).float()

    def __call__(self, lr):
        """(N, 3, p, p) float tensor of 8-bit values -> (N, 3, p*s, p*s) 8-bit values, rounded and clipped."""
        up = self.matrix @ lr @ self.matrix.T
        return (up + 0.5).floor_().clamp_(0, 255)


class BlurRanker:
    """OpenCV's Gaussian blur (sigma BLUR_SIGMA px, 7x7, edges mirrored) of each sub-image: denoising's
    bicubic."""

    batch = 64

    def __call__(self, noisy):
        """(N, 3, p, p) float tensor of 8-bit values -> the blurred sub-images, rounded and clipped."""
        import cv2
        import torch

        images = noisy.permute(0, 2, 3, 1).numpy()
        out = np.stack([cv2.GaussianBlur(image, (7, 7), BLUR_SIGMA) for image in images])
        return (torch.from_numpy(out).permute(0, 3, 1, 2) + 0.5).floor_().clamp_(0, 255)


class NoisyInput:
    """Ranks denoising: adds Gaussian noise of `sigma` (0-255 scale) to each clean batch, rounds to 8 bits
    as a stored noisy photo would be, and passes it to `inner`. The noise is seeded by the batch's pixels,
    so a resumed or parallel run ranks every sub-image exactly as an uninterrupted one."""

    def __init__(self, inner, sigma: float):
        self.inner = inner
        self.sigma = float(sigma)
        self.batch = inner.batch

    def __call__(self, clean):
        import zlib

        import torch

        seed = zlib.crc32(clean.to(torch.uint8).numpy().tobytes())
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
        noisy = (clean + self.sigma * noise).round_().clamp_(0, 255)
        return self.inner(noisy)


class NetworkRanker:
    """A network's output on batches of LR sub-images, quantised to 8 bits as a stored image would be."""

    def __init__(self, model, device=None):
        import torch

        from classsr_cli.engine.inference_graph import optimize_for_inference

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # batch norms folded (DnCNN, CARN): the same outputs up to float rounding, in one pass instead of two
        self.model = optimize_for_inference(model.eval(), subpixel=False).to(self.device)
        self.batch = 256 if self.device.type == "cuda" else 64

    @classmethod
    def from_rank(cls, rank: RankModel, scale: int) -> "NetworkRanker":
        """The ranking model `rank` (a family's shipped base network, or a weights file)."""
        from classsr_cli import weights

        if rank.kind == "family":
            model = weights.load_base_network(rank.name)
        else:
            model = weights.load_model(rank.name)
        if hasattr(model, "branches"):  # a ClassSR model: its hardest branch is the strongest network
            model = model.branches[-1]
        model_scale = getattr(model, "scale", scale)
        if model_scale != scale:
            raise ModelError(f"the ranking model {rank.label} upscales x{model_scale}, not x{scale}")
        return cls(model)

    def __call__(self, lr):
        import torch

        with torch.inference_mode():
            out = self.model(lr.to(self.device) / 255.0).float()
            return (out.clamp(0, 1) * 255.0 + 0.5).floor().cpu()


def make_ranker(rank: RankModel, patch: int, scale: int, noise_sigma: float = 0.0):
    """The ranker of an upscale (noise_sigma 0) or denoise (scale 1, noise_sigma > 0) data set."""
    if rank.kind == BICUBIC:
        return BicubicRanker(patch, scale)
    ranker = BlurRanker() if rank.kind == BLUR else NetworkRanker.from_rank(rank, scale)
    return NoisyInput(ranker, noise_sigma) if noise_sigma > 0 else ranker


def rank_subimages(lr: np.ndarray, hr: np.ndarray, ys, xs, patch: int, scale: int, ranker) -> np.ndarray:
    """PSNR of the ranker's output for every LR sub-image at (y, x) in ys x xs (row-major), float32."""
    import torch
    from numpy.lib.stride_tricks import sliding_window_view

    # views (H', W', C, p, p): fancy indexing copies just the chosen windows, already channels-first
    lr_windows = sliding_window_view(lr, (patch, patch), axis=(0, 1))
    hr_windows = sliding_window_view(hr, (patch * scale, patch * scale), axis=(0, 1))
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    grid_y, grid_x = grid_y.ravel(), grid_x.ravel()
    psnr = np.empty(len(grid_y), dtype=np.float32)
    for start in range(0, len(grid_y), ranker.batch):
        y, x = grid_y[start : start + ranker.batch], grid_x[start : start + ranker.batch]
        lr_batch = torch.from_numpy(lr_windows[y, x]).float()
        hr_batch = torch.from_numpy(hr_windows[y * scale, x * scale]).float()
        psnr[start : start + len(y)] = psnr_per_subimage(ranker(lr_batch), hr_batch, cap=PSNR_CAP)
    return psnr
