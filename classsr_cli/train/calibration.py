"""After stage 2 or 3: shift the Class-Module's logits towards harder classes until routing spends a chosen
share of the base network's FLOPs on the held-out photos.

A Class-Module trained on the prepared classes routes by how hard a sub-image is for bicubic, whatever the
branches can do; when the small branches fall short, sending more tiles to harder branches buys PSNR. The
shift is class index x `shift`, added to the last layer's bias, so the shipped model routes that way by
argmax and needs no setting at inference. Only the Class-Module runs while searching: it is cheap.

A shift can also be given as is (`shift`): one chosen elsewhere, e.g. from a curve of PSNR against FLOPs on
held-out photos (benchmarks/routing_curve.py), where a FLOPs target is not what is being held.

Or chosen to hold PSNR (`tolerance_shift`): on a folder relabelled by `train relabel`, whose branch errors
are known for every sub-image of every photo in it, the cheapest shift that keeps the mean PSNR over those
photos within a tolerance of the hardest branch's.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from classsr_cli.engine.routing import plan_for
from classsr_cli.engine.tiling import PATCH, pad_to_tile, tile_starts
from classsr_cli.errors import OVERWRITE_HINT, ModelError, WeightsError
from classsr_cli.models import ClassSR

DEFAULT_FLOPS_RATIO = 0.7  # of the base network's FLOPs, where no other target is given


@dataclass
class Calibration:
    shift: float  # added to logit j as j * shift (j = 0 simple ... M-1 hard)
    flops_ratio_before: float
    flops_ratio_after: float
    tiles: int


def held_out_tiles(lr_images: list[np.ndarray]) -> torch.Tensor:
    """Every 32x32 tile of the grid the engine cuts (stride 28), from float (h, w, 3) LR images in [0, 1]."""
    tiles = []
    for lr in lr_images:
        lr = pad_to_tile(lr)  # as the engine does: an image smaller than a tile still gives one
        for top in tile_starts(lr.shape[0]):
            for left in tile_starts(lr.shape[1]):
                tiles.append(lr[top : top + PATCH, left : left + PATCH])
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


def _routed(logits: np.ndarray, shift: float) -> np.ndarray:
    """The class of each row under argmax routing with class j's logit raised by j x shift."""
    return np.argmax(logits + shift * np.arange(logits.shape[1]), axis=1)


def _branch_cost(model: ClassSR) -> np.ndarray:
    """Per-tile cost of each class relative to the base network, the Class-Module included (as the engine
    counts it)."""
    plan = plan_for(model)
    return (np.array(plan.branch_flops) + plan.classifier_flops) / plan.base_flops


def _routing_flops_ratio(logits: np.ndarray, shift: float, branch_cost: np.ndarray) -> float:
    """Mean cost per tile, relative to the base network, of argmax routing with the shift applied."""
    return float(branch_cost[_routed(logits, shift)].mean())


def calibrate_routing(
    model: ClassSR,
    tiles: torch.Tensor,
    flops_ratio: float | None,
    steps: int = 40,
    shift: float | None = None,
) -> Calibration:
    """Shift `model`'s class logits in place so argmax routing of `tiles` costs about `flops_ratio`, or by
    `shift` itself where given (then `flops_ratio` is not used; the ratios are still measured on `tiles`)."""
    if not isinstance(model, ClassSR):
        raise ModelError("calibration needs a ClassSR model (RUN/stage2.safetensors), not a single network")
    branch_cost = _branch_cost(model)
    if shift is None and not branch_cost[0] <= flops_ratio <= branch_cost[-1]:
        raise ModelError(
            f"--flops-ratio must lie between {branch_cost[0]:.3f} (every tile on branch 1) and "
            f"{branch_cost[-1]:.3f} (every tile on the base network), got {flops_ratio}"
        )
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model.classifier(batch) for batch in tiles.split(1024)]).float().numpy()
    before = _routing_flops_ratio(logits, 0.0, branch_cost)
    # the cost grows with the shift (each tile's argmax can only move to a harder class), so bisect;
    # beyond the logits' spread every tile sits in one class
    if shift is None:
        spread = float(logits.max() - logits.min()) + 1.0
        low, high = -spread, spread
        for _ in range(steps):
            middle = (low + high) / 2
            if _routing_flops_ratio(logits, middle, branch_cost) <= flops_ratio:
                low = middle
            else:
                high = middle
        shift = low  # the largest shift found that stays within the ratio
    with torch.no_grad():
        bias = model.classifier.lastOut.bias
        bias += shift * torch.arange(bias.numel(), dtype=bias.dtype)
    return Calibration(shift, before, _routing_flops_ratio(logits, shift, branch_cost), len(logits))


def tolerance_shift(model: ClassSR, data: Path, tolerance: float, step: float = 0.05) -> dict:
    """The cheapest shift, on a grid of `step`, at which routing the sub-images of the relabelled folder
    `data` (both splits) by `model`'s Class-Module keeps the mean PSNR over its photos within `tolerance`
    dB of the hardest branch run everywhere.

    Each sub-image counts the error of the branch it is routed to over its central cell (the
    `branch_errors.npy` of `train relabel`), and a photo's PSNR (one per prepared image and scale) comes
    from the sum over its sub-images (overlapping at the prepared stride, so each pixel counts about as
    often as any other); sub-images are routed one by one, not planned into the engine's pieces. FLOPs
    are the paper's convention, the Class-Module included. Returns the shift, the PSNR drop and FLOPs
    there and the photo count; DataError for a folder without branch errors."""
    from classsr_cli.data.dataset import SPLITS, SubImageDataset, load_index
    from classsr_cli.errors import DataError

    path = Path(data) / "branch_errors.npy"
    if not path.is_file():
        raise DataError(f"{data} holds no branch errors: `classsr train relabel` writes them")
    index, errors = load_index(Path(data)), np.load(path)
    logits = np.zeros((len(index), model.num_classes), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for split, code in SPLITS.items():  # a split's sub-images come in index order
            rows = np.flatnonzero(index["split"] == code)
            if len(rows) == 0:
                continue
            subimages = SubImageDataset(Path(data), split, augment=False)
            for start in range(0, len(rows), 1024):
                batch = torch.stack([subimages[i][0] for i in range(start, min(start + 1024, len(rows)))])
                logits[rows[start : start + len(batch)]] = model.classifier(batch).float().numpy()
    _, photo = np.unique(np.stack([index["image"], index["scale"]], axis=1), axis=0, return_inverse=True)
    photo = photo.reshape(-1)
    cost = _branch_cost(model)

    def mean_psnr(chosen: np.ndarray) -> float:  # up to a constant that cancels in differences
        return float(np.mean(-10 * np.log10(np.bincount(photo, weights=chosen) / np.bincount(photo))))

    base = mean_psnr(errors[:, -1])
    spread = float(logits.max() - logits.min()) + step
    best = None
    for shift in np.arange(-np.ceil(spread / step), np.ceil(spread / step) + 1) * step:
        classes = _routed(logits, shift)
        drop = base - mean_psnr(errors[np.arange(len(errors)), classes])
        flops = float(cost[classes].mean())
        if drop <= tolerance and (best is None or flops < best["flops_ratio"] - 1e-12):
            best = {"shift": round(float(shift), 6), "psnr_drop": drop, "flops_ratio": flops}
    return {**best, "photos": int(photo.max()) + 1, "subimages": len(index)}


def calibrate_file(
    source: Path,
    data: Path,
    target: Path,
    flops_ratio: float | None,
    crop: int,
    overwrite: bool = False,
    shift: float | None = None,
    tolerance: float | None = None,
) -> dict:
    """Calibrate the ClassSR weights in `source` on the held-out photos of `data` to `flops_ratio` (0.7
    when nothing is given), or shift them by `shift`, or by the `tolerance_shift` of the relabelled folder
    `data` for `tolerance` dB, measuring the FLOPs on the held-out photos; write them to `target`
    (WeightsError where it exists and `overwrite` is off; ModelError where more than one of the three is
    given). Returns the summary `train calibrate` prints."""
    from classsr_cli.data.dataset import input_noise
    from classsr_cli.train.validation import load_val_photos
    from classsr_cli.weights import load_weights, save_model

    if sum(value is not None for value in (flops_ratio, shift, tolerance)) > 1:
        raise ModelError("give one of --flops-ratio, --shift and --tolerance")
    if flops_ratio is None and shift is None and tolerance is None:
        flops_ratio = DEFAULT_FLOPS_RATIO

    if Path(target).exists() and not overwrite:
        raise WeightsError(f"{target} exists: {OVERWRITE_HINT} to replace it")
    loaded = load_weights(source, kind="classsr")
    # denoising data: the Class-Module must see the noisy inputs it routes at inference
    sigma = input_noise(Path(data), loaded.model.scale)
    photos = load_val_photos(Path(data), crop, loaded.model.scale, sigma)
    if not photos:
        raise ModelError(f"{data} has no held-out photos to calibrate on (prepare-data with a val fraction)")
    tiles = held_out_tiles([photo.lr for photo in photos])
    held = None
    if tolerance is not None:
        held = tolerance_shift(loaded.model, Path(data), tolerance)
        shift = held["shift"]
    result = calibrate_routing(loaded.model, tiles, flops_ratio, shift=shift)
    save_model(loaded.model, target, loaded.family, stage="calibrated", routing_shift=f"{result.shift:.4f}")
    return {
        "stage": "calibrate",
        "weights": str(target),
        "photos": len(photos),
        "tiles": result.tiles,
        "shift": round(result.shift, 4),
        "flops_ratio_before": round(result.flops_ratio_before, 4),
        "flops_ratio_after": round(result.flops_ratio_after, 4),
        **(
            {
                "tolerance": tolerance,
                "subimage_photos": held["photos"],
                "subimage_psnr_drop": round(held["psnr_drop"], 4),
                "subimage_flops_ratio": round(held["flops_ratio"], 4),
            }
            if held
            else {}
        ),
    }
