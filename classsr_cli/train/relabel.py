"""Label every prepared sub-image with the branch it needs, measured by the trained branches themselves.

`prepare-data` ranks sub-images by how well one reference network does on them and cuts the ranking into
equal classes. What routing has to decide is another thing: whether a small branch is nearly as good as the
large one *on this sub-image*. Once the branches are trained, this module measures it: every branch runs on
every sub-image (denoising: with seeded noise of the data's sigma), and sub-image i gets the class

    argmin_k  SSE_k(i) + lambda * FLOPs_k,

the cheapest trade of error against arithmetic, with lambda the smallest that makes the labels spend at most
`flops_ratio` of the base network's FLOPs. A Class-Module trained on these labels (`train classifier
--w-label 1`) learns which sub-images the small branches handle, every sub-image alike; trained on the
costs themselves (`train classifier --w-cost 1`, the expected cost of its routing under the route costs
written beside the labels), it learns most where the choice matters most. `train calibrate` then sets its
cost on photos. The labelled copy shares the source folder's images (symbolic links) and has its own index.

Two ways to measure SSE_k (`engine`): each sub-image run alone, as `prepare-data` runs its ranking network
(zero padding at its edges, so the outer EDGE pixels are left out), or (`engine=True`, upscaling only) each
branch run once over every prepared LR image through the inference engine, as `upscale --branch K` runs it
(region pieces with real context, back-projection), and the error summed over the part of the sub-image a
tile owns in the engine (its central 28x28 LR pixels). The second sees what users get and, since the
prepared sub-images overlap (stride 16), costs about a quarter of the arithmetic.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from classsr_cli.data.dataset import (
    ROUTE_COSTS,
    SPLITS,
    SubImageDataset,
    input_noise,
    load_index,
    prepared_info,
)
from classsr_cli.data.prepare import SPLIT_TRAIN
from classsr_cli.data.ranking import NetworkRanker, NoisyInput
from classsr_cli.engine.routing import plan_for
from classsr_cli.engine.runner import pick_device
from classsr_cli.errors import DataError, ModelError
from classsr_cli.files import write_json
from classsr_cli.models import ClassSR
from classsr_cli.weights import load_model, sha256_of

# Output pixels this far from a sub-image's edge are left out of its error: there a branch sees zero
# padding, which the engine's region execution replaces with real neighbouring pixels.
EDGE = 4
# LR pixels at each edge of a 32x32 sub-image outside the cell it owns in the engine (tiles at stride 28)
CELL_MARGIN = 2


def scale_rows(info: dict, index: np.ndarray, scales: list[float] | None) -> np.ndarray:
    """Positions in `index` of the sub-images of the prepared `scales` (all for None); DataError for a
    scale the folder was not prepared at."""
    if scales is None:
        return np.arange(len(index))
    prepared = [float(s) for s in info["arguments"]["scales"]]
    wanted = []
    for scale in scales:
        found = [i for i, s in enumerate(prepared) if abs(s - float(scale)) < 1e-6]
        if not found:
            raise DataError(f"--scales {scale}: the data were prepared at {', '.join(map(str, prepared))}")
        wanted += found
    return np.flatnonzero(np.isin(index["scale"], wanted))


def branch_errors(
    model: ClassSR, data: Path, device: str = "auto", progress=None, rows: np.ndarray | None = None
) -> np.ndarray:
    """Squared error of every branch on every sub-image of `data`, in index order: (N, M); with `rows`,
    only those positions of the index, in that order.

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
    wanted = np.zeros(len(index), dtype=bool)
    wanted[np.arange(len(index)) if rows is None else rows] = True
    position = np.cumsum(wanted) - 1  # index position -> row of the result
    errors = np.zeros((int(wanted.sum()), len(rankers)), dtype=np.float64)
    edge = EDGE * model.scale
    done = 0
    for split, code in SPLITS.items():  # a split's sub-images come in index order
        in_split = np.flatnonzero(index["split"] == code)
        chosen = np.flatnonzero(wanted[in_split])  # positions within the split's dataset
        subimages = SubImageDataset(data, split, augment=False)
        for start in range(0, len(chosen), rankers[0].batch):
            batch = chosen[start : start + rankers[0].batch]
            items = [subimages[int(i)] for i in batch]
            inputs = (torch.stack([item[0] for item in items]) * 255).round()
            targets = (torch.stack([item[1] for item in items]) * 255).round()[..., edge:-edge, edge:-edge]
            for k, ranker in enumerate(rankers):
                squared = (ranker(inputs)[..., edge:-edge, edge:-edge] - targets) ** 2
                errors[position[in_split[batch]], k] = squared.sum(dim=(1, 2, 3)).double().numpy()
            done += len(items)
            if progress is not None:
                progress(done, len(errors))
    return errors


def engine_branch_errors(
    model: ClassSR, data: Path, device: str = "auto", progress=None, rows: np.ndarray | None = None
) -> np.ndarray:
    """Squared error of every branch on every sub-image of `data` (N, M), in index order, from each branch
    run through the inference engine over every prepared LR image (`upscale --branch K`: region pieces with
    real context, back-projection; 8-bit outputs) and summed over each sub-image's central cell (CELL_MARGIN
    LR pixels in from each edge), on the 0-255 scale; with `rows`, only those positions of the index, in
    that order. Upscaling data only. `progress(done, total)` follows each image."""
    from classsr_cli.engine import Upscaler
    from classsr_cli.pixels import unit_to_uint8

    info = prepared_info(data)
    if input_noise(data, model.scale):
        raise ModelError(
            "engine labels are for upscaling data: denoising data is relabelled sub-image by sub-image"
        )
    root, scale = Path(info["root"]), model.scale
    patch = int(info["patch_lr"])
    files = {
        (image["id"], scale_id): (root / entry["hr"], root / entry["lr"])
        for image in info["images"]
        for scale_id, entry in enumerate(image["scales"])
        if entry.get("hr")
    }
    engines = [Upscaler(model, device, branch=k + 1) for k in range(model.num_classes)]
    index = load_index(data)
    if rows is not None:
        index = index[rows]
    errors = np.zeros((len(index), model.num_classes), dtype=np.float64)
    groups = np.unique(np.stack([index["image"], index["scale"]], axis=1), axis=0)
    low, high = CELL_MARGIN * scale, (patch - CELL_MARGIN) * scale
    done = 0
    for image, scale_id in groups:
        rows = np.flatnonzero((index["image"] == image) & (index["scale"] == scale_id))
        hr_path, lr_path = files[(int(image), int(scale_id))]
        lr = np.load(lr_path)
        hr = np.load(hr_path)[: lr.shape[0] * scale, : lr.shape[1] * scale].astype(np.int32)
        ys, xs = index["y"][rows].astype(np.int64) * scale, index["x"][rows].astype(np.int64) * scale
        for k, engine in enumerate(engines):
            out = unit_to_uint8(engine.upscale_array(lr.astype(np.float32) / 255.0)[0]).astype(np.int32) - hr
            squared = np.einsum("hwc,hwc->hw", out, out)
            table = np.zeros((squared.shape[0] + 1, squared.shape[1] + 1), dtype=np.int64)
            np.cumsum(np.cumsum(squared, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
            errors[rows, k] = (
                table[ys + high, xs + high] - table[ys + low, xs + high] - table[ys + high, xs + low]
                + table[ys + low, xs + low]
            )  # fmt: skip
        done += len(rows)
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


def routing_costs(errors: np.ndarray, costs: np.ndarray, lam: float, train: np.ndarray) -> np.ndarray:
    """(N, M) float32: what routing each sub-image to each branch costs, errors[:, k] + lam * costs[k],
    less the row's least cost (0 on its label), divided by the mean over `train` rows of the largest less
    the least, so the losses stay of order 1 whatever the errors' scale. The targets of the Class-Module's
    expected-cost loss (`train classifier --w-cost`, `train.losses.expected_cost`)."""
    total = np.asarray(errors, dtype=np.float64) + lam * np.asarray(costs, dtype=np.float64)
    total -= total.min(axis=1, keepdims=True)
    spread = float(total[train].max(axis=1).mean()) if train.any() else 0.0
    return (total / max(spread, 1e-12)).astype(np.float32)


def _earlier_errors(folder: Path, index: np.ndarray, weights: Path) -> tuple[np.ndarray, bool]:
    """(errors, measured through the engine) of an earlier relabelled folder; DataError unless it holds
    the same sub-images (in the same order) and came from weights of the same contents."""
    try:
        meta = prepared_info(folder)
        earlier, errors = load_index(folder), np.load(folder / "branch_errors.npy")
    except (OSError, ValueError) as error:
        raise DataError(f"--errors-from {folder}: {error}") from None
    made = meta.get("relabelled", {})
    fields = ["image", "scale", "y", "x", "split"]
    if len(earlier) != len(index) or any((earlier[f] != index[f]).any() for f in fields):
        raise DataError(f"--errors-from {folder} holds other sub-images: relabel the same data and --scales")
    if made.get("weights_sha256") not in (None, sha256_of(Path(weights))):
        raise DataError(f"--errors-from {folder} was measured with other weights than {weights}")
    return errors, made.get("errors") == "engine"


def relabel(
    weights: Path,
    data: Path,
    out: Path,
    flops_ratio: float,
    device: str = "auto",
    progress=None,
    engine: bool = False,
    scales: list[float] | None = None,
    errors_from: Path | None = None,
) -> dict:
    """Write `out`: `data` with every sub-image's class set by `weights`' branches (see the module;
    `engine`: their errors measured through the inference engine). `scales`: only the sub-images of these
    prepared scales are measured and kept (a shorter pass; the others are left out of `out`).
    `errors_from`: a folder this function wrote from the same data, weights and scales, whose errors are
    taken instead of running the branches again (labels at another FLOPs ratio in seconds).

    Also writes out/branch_errors.npy, the (N, M) errors in index order, and out/route_costs.npy, their
    `routing_costs` at the labels' lambda (for `train classifier --w-cost`). Returns a summary: the labels'
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
    keep = scale_rows(info, load_index(data), scales)
    index = load_index(data)[keep]
    if errors_from is not None:
        errors, through_engine = _earlier_errors(Path(errors_from), index, weights)
        if engine and not through_engine:
            raise DataError(
                f"--errors-from {errors_from} holds errors of sub-images run alone, not through the engine: "
                "leave out --engine, or relabel without --errors-from"
            )
        engine = through_engine
    else:
        measure = engine_branch_errors if engine else branch_errors
        errors = measure(model.eval(), data, device, progress=progress, rows=keep)
    train = index["split"] == SPLIT_TRAIN
    labels, lam = cheapest_labels(errors[train], costs, flops_ratio)
    index["cls"][train] = labels
    index["cls"][~train] = np.argmin(errors[~train] + lam * costs, axis=1)
    counts = np.bincount(labels, minlength=model.num_classes).tolist()
    summary = {
        "weights": str(weights),
        "weights_sha256": sha256_of(Path(weights)),
        "errors": "engine" if engine else "sub-images",
        **({"errors_from": str(errors_from)} if errors_from is not None else {}),
        "scales": sorted({float(info["arguments"]["scales"][i]) for i in np.unique(index["scale"])}),
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
            if name not in ("index.npy", "meta.json", "branch_errors.npy", ROUTE_COSTS) and name[0] != ".":
                (partial / name).symlink_to(source / name)
        np.save(partial / "index.npy", index)
        np.save(partial / "branch_errors.npy", errors)
        np.save(partial / ROUTE_COSTS, routing_costs(errors, costs, lam, train))
        write_json(partial / "meta.json", meta)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary
