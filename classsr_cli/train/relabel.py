"""Label every prepared sub-image with the branch it needs, measured by the trained branches themselves.

`prepare-data` ranks sub-images by how well one reference network does on them and cuts the ranking into
equal classes. What routing has to decide is another thing: whether a small branch is nearly as good as the
large one *on this sub-image*. Once the branches are trained, this module measures it: every branch runs on
every sub-image (denoising: with seeded noise of the data's sigma), and sub-image i gets the class

    argmin_k  SSE_k(i) + lambda * FLOPs_k,

the cheapest trade of error against arithmetic, with lambda the smallest that makes the labels spend at most
`flops_ratio` of the base network's FLOPs. A Class-Module trained on these labels (`train classifier
--w-label 1`) learns which sub-images the small branches handle; `train calibrate` then sets its cost on
photos. The labelled copy shares the source folder's images (symbolic links) and has its own index.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from classsr_cli.data.dataset import SPLITS, SubImageDataset, input_noise, load_index, prepared_info
from classsr_cli.data.prepare import SPLIT_TRAIN
from classsr_cli.data.ranking import NetworkRanker, NoisyInput
from classsr_cli.engine.routing import plan_for
from classsr_cli.engine.runner import pick_device
from classsr_cli.errors import DataError, ModelError
from classsr_cli.files import write_json
from classsr_cli.models import ClassSR
from classsr_cli.weights import load_model

# Output pixels this far from a sub-image's edge are left out of its error: there a branch sees zero
# padding, which the engine's region execution replaces with real neighbouring pixels.
EDGE = 4


def branch_errors(model: ClassSR, data: Path, device: str = "auto", progress=None) -> np.ndarray:
    """Squared error of every branch on every sub-image of `data`, in index order: (N, M).

    Each branch runs as `prepare-data` runs its ranking network (8-bit outputs; denoising data with the
    same seeded noise of its sigma, so every branch sees the same noisy sub-image). Errors are sums over the
    output less EDGE pixels on each side, on the 0-255 scale. `progress(done, total)` follows each batch.
    """
    noise_sigma = input_noise(data, model.scale)
    target = pick_device(device)
    rankers = [NetworkRanker(branch, target) for branch in model.branches]
    if noise_sigma:
        rankers = [NoisyInput(ranker, noise_sigma) for ranker in rankers]
    index = load_index(data)
    errors = np.zeros((len(index), len(rankers)), dtype=np.float64)
    edge = EDGE * model.scale
    done = 0
    for split, code in SPLITS.items():  # a split's sub-images come in index order
        rows = np.flatnonzero(index["split"] == code)
        subimages = SubImageDataset(data, split, augment=False)
        for start in range(0, len(rows), rankers[0].batch):
            items = [subimages[i] for i in range(start, min(start + rankers[0].batch, len(rows)))]
            inputs = (torch.stack([item[0] for item in items]) * 255).round()
            targets = (torch.stack([item[1] for item in items]) * 255).round()[..., edge:-edge, edge:-edge]
            for k, ranker in enumerate(rankers):
                squared = (ranker(inputs)[..., edge:-edge, edge:-edge] - targets) ** 2
                errors[rows[start : start + len(items)], k] = squared.sum(dim=(1, 2, 3)).double().numpy()
            done += len(items)
            if progress is not None:
                progress(done, len(index))
    return errors


def check_ratio(costs: np.ndarray, flops_ratio: float) -> None:
    """ModelError unless `flops_ratio` lies between the cheapest and the dearest branch's cost."""
    if not costs[0] <= flops_ratio <= costs[-1]:
        raise ModelError(
            f"--flops-ratio must lie between {costs[0]:.3f} and {costs[-1]:.3f}, got {flops_ratio}"
        )


def cheapest_labels(errors: np.ndarray, costs: np.ndarray, flops_ratio: float) -> tuple[np.ndarray, float]:
    """argmin_k errors[:, k] + lam * costs[k] per row, with the smallest lam >= 0 whose labels cost at most
    `flops_ratio` on average (`costs` relative to the last branch, which costs 1). Returns (labels, lam)."""
    costs = np.asarray(costs, dtype=np.float64)
    check_ratio(costs, flops_ratio)

    def labels(lam: float) -> np.ndarray:
        return np.argmin(errors + lam * costs, axis=1)

    if costs[labels(0.0)].mean() <= flops_ratio:
        return labels(0.0), 0.0
    low, high = 0.0, float(errors.max()) / max(float(np.diff(costs).min()), 1e-9) + 1.0
    for _ in range(60):  # the cost falls as lam grows: bisect for the smallest lam within the ratio
        middle = (low + high) / 2
        if costs[labels(middle)].mean() <= flops_ratio:
            high = middle
        else:
            low = middle
    return labels(high), high


def relabel(
    weights: Path, data: Path, out: Path, flops_ratio: float, device: str = "auto", progress=None
) -> dict:
    """Write `out`: `data` with every sub-image's class set by `weights`' branches (see the module).

    Also writes out/branch_errors.npy, the (N, M) errors in index order. Returns a summary: the labels'
    FLOPs ratio, lambda and class counts. ModelError for a single network or a ratio out of reach,
    DataError for data of another number of classes or an existing `out`.
    """
    model = load_model(weights)
    if not isinstance(model, ClassSR):
        raise ModelError(f"{weights} is a single network: relabelling needs a ClassSR model's branches")
    info = prepared_info(data)
    if int(info["arguments"]["classes"]) != model.num_classes:
        raise DataError(
            f"{data} has {info['arguments']['classes']} classes, {weights} {model.num_classes} branches"
        )
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} exists: choose another folder")
    costs = np.array(plan_for(model).branch_flops, dtype=np.float64)
    costs /= costs[-1]
    check_ratio(costs, flops_ratio)  # before the long pass over the data
    errors = branch_errors(model.eval(), data, device, progress=progress)
    index = load_index(data)
    train = index["split"] == SPLIT_TRAIN
    labels, lam = cheapest_labels(errors[train], costs, flops_ratio)
    index["cls"][train] = labels
    index["cls"][~train] = np.argmin(errors[~train] + lam * costs, axis=1)
    counts = np.bincount(labels, minlength=model.num_classes).tolist()
    summary = {
        "weights": str(weights),
        "flops_ratio": float(costs[labels].mean()),
        "lambda": lam,
        "class_counts": counts,
        "val_class_counts": np.bincount(index["cls"][~train], minlength=model.num_classes).tolist(),
    }
    meta = {k: v for k, v in info.items() if k != "root"}
    meta.update(class_counts=counts, val_class_counts=summary["val_class_counts"], relabelled=summary)
    # written beside `out` and renamed when complete: an interrupted run leaves no half-made folder
    source = Path(info["root"]).resolve()
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True)
        for name in os.listdir(source):
            if name not in ("index.npy", "meta.json", "branch_errors.npy") and not name.startswith("."):
                (partial / name).symlink_to(source / name)
        np.save(partial / "index.npy", index)
        np.save(partial / "branch_errors.npy", errors)
        write_json(partial / "meta.json", meta)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary
