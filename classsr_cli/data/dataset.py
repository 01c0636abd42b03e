"""Torch datasets over a prepare-data folder: sub-images cropped on the fly from memory-mapped images."""

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from classsr_cli.data.augment import DIHEDRAL_TRANSFORMS, dihedral
from classsr_cli.data.prepare import FORMAT, FORMAT_VERSION, INDEX_DTYPE, SPLIT_TRAIN, SPLIT_VAL
from classsr_cli.errors import DataError

SPLITS = {"train": SPLIT_TRAIN, "val": SPLIT_VAL}
# (N, M) float32 in index order, written by `classsr train relabel`: each sub-image's cost on each branch
ROUTE_COSTS = "route_costs.npy"


def prepared_info(root: Path) -> dict:
    """The meta.json of a prepared folder (with `root` added), or DataError saying what is wrong."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"prepared data folder not found: {root} (make it with `classsr prepare-data`)")
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"{root} is not a prepared data folder: no meta.json (make it with `classsr prepare-data`)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{meta_path} is unreadable: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path} is not a classsr prepare-data description")
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{root} was prepared in format {meta.get('version')}, this version reads {FORMAT_VERSION}: "
            "run prepare-data again"
        )
    for key in ("images", "arguments", "psnr_thresholds", "patch_lr", "patch_hr"):
        if key not in meta:
            raise DataError(f"{meta_path} lacks '{key}': prepare the folder again")
    if not (root / "index.npy").is_file():
        raise DataError(f"{root} has no index.npy: prepare-data did not finish; run it again to resume")
    return {**meta, "root": str(root)}


def input_noise(root: Path, scale: int) -> float | None:
    """The Gaussian noise sigma (0-255 scale) the inputs of a prepared folder get: None for upscaling data.

    Raises DataError when the folder was prepared for another scale (task) than `scale`."""
    arguments = prepared_info(root)["arguments"]
    data_scale = int(arguments["scale"])
    if data_scale != scale:
        what = "denoising (scale 1)" if data_scale == 1 else f"x{data_scale} upscaling"
        raise DataError(f"{root} was prepared for {what}; this model's scale is {scale}")
    return arguments.get("noise_sigma") if arguments.get("task", "upscale") == "denoise" else None


def load_index(root: Path) -> np.ndarray:
    """The sub-image index (structured array, INDEX_DTYPE) of a prepared folder."""
    path = Path(root) / "index.npy"
    try:
        index = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is unreadable: {error}") from None
    if index.dtype != INDEX_DTYPE:
        raise DataError(f"{path} has fields {index.dtype.names}, expected {INDEX_DTYPE.names}: prepare again")
    return index


def _largest_scale(image: dict) -> dict | None:
    usable = [entry for entry in image["scales"] if entry.get("hr")]
    return max(usable, key=lambda entry: entry["scale"]) if usable else None


def val_images(root: Path) -> list[tuple[str, Path, Path]]:
    """The held-out photos as (name, HR .npy, LR .npy), at their largest prepared scale (1.0 by default).

    Both files hold uint8 (H, W, 3) RGB; open them with np.load(path, mmap_mode="r").
    """
    info = prepared_info(root)
    root = Path(info["root"])
    pairs = []
    for image in info["images"]:
        entry = _largest_scale(image) if image.get("split") == "val" else None
        if entry:
            pairs.append((image["name"], root / entry["hr"], root / entry["lr"]))
    return pairs


def _route_costs(root: Path, rows: int) -> np.ndarray:
    path = root / ROUTE_COSTS
    if not path.is_file():
        raise DataError(
            f"{root} has no {ROUTE_COSTS}: --w-cost trains on the branches' errors, which "
            "`classsr train relabel` writes (run it, or relabel again with --errors-from)"
        )
    try:
        costs = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if costs.ndim != 2 or len(costs) != rows:
        raise DataError(f"{path} holds {costs.shape[0]} rows for {rows} sub-images: relabel again")
    return costs


class SubImageDataset(Dataset):
    """(LR 3xPxP, HR 3x(sP)x(sP) float32 in [0, 1], class) per sub-image of a prepared folder.

    `classes` keeps only those classes (0 = simple); stage 1 trains branch j on class j. `augment` applies
    one of the 8 flips/rotations, the same to LR and HR. `route_costs`: the third item is the sub-image's
    (M,) float32 row of the relabelled folder's route_costs.npy instead of its class (DataError if the
    folder has none). The images are memory-mapped lazily in each process
    (DataLoader workers included), so only the small index travels to the workers.
    """

    def __init__(
        self,
        root: Path,
        split: str = "train",
        classes: list[int] | None = None,
        augment: bool = True,
        seed: int = 0,
        route_costs: bool = False,
    ):
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
        info = prepared_info(root)
        self.root = Path(info["root"])
        self.split = split
        self.augment = augment
        self.seed = seed
        self.patch = int(info["patch_lr"])
        self.scale = int(info["arguments"]["scale"])
        self.num_classes = int(info["arguments"]["classes"])
        index = load_index(self.root)
        keep = index["split"] == SPLITS[split]
        if classes is not None:
            classes = [int(c) for c in classes]
            bad = [c for c in classes if not 0 <= c < self.num_classes]
            if bad:
                raise DataError(
                    f"class {bad[0]} does not exist: {self.root} has classes 0 to {self.num_classes - 1}"
                )
            keep &= np.isin(index["cls"], classes)
        rows = index[keep]
        # plain contiguous columns: cheap to pickle to workers and to index
        self._image = np.ascontiguousarray(rows["image"])
        self._scale = np.ascontiguousarray(rows["scale"])
        self._y = np.ascontiguousarray(rows["y"])
        self._x = np.ascontiguousarray(rows["x"])
        self.labels = np.ascontiguousarray(rows["cls"]).astype(np.int64)
        self.psnr = np.ascontiguousarray(rows["psnr"])
        self.targets = self.labels  # the third item of each sample: the class, or its route costs
        if route_costs:
            self.targets = np.ascontiguousarray(_route_costs(self.root, len(index))[keep])
        self._files = {
            (image["id"], scale_id): (entry["hr"], entry["lr"])
            for image in info["images"]
            for scale_id, entry in enumerate(image["scales"])
            if entry.get("hr")
        }
        self._arrays: dict = {}
        self._rng = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    def crop_table(self) -> dict[str, np.ndarray]:
        """The sub-images as columns, one row each: image and scale (the keys of `images`), y and x (the
        top-left LR pixel; the HR crop starts at `scale` times it) and cls (0 = simple; with `route_costs`,
        each sub-image's (M,) route costs instead)."""
        return {"image": self._image, "scale": self._scale, "y": self._y, "x": self._x, "cls": self.targets}

    def images(self, image: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
        """(HR, LR) of one scaled photo: uint8 (H, W, 3) arrays, memory-mapped. DataError if missing."""
        return self._pair(image, scale)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"], state["_rng"], state["_pid"] = {}, None, None  # each process maps its own
        return state

    def _process_state(self):
        if self._pid != os.getpid():  # first use in this process (or a forked copy): fresh maps and RNG
            self._pid = os.getpid()
            self._arrays = {}
            # torch seeds every DataLoader worker differently (and anew each epoch); mix in our seed
            self._rng = np.random.default_rng([self.seed, torch.initial_seed()])
        return self._arrays

    def _pair(self, image: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._process_state()
        key = (image, scale)
        if key not in arrays:
            try:
                hr_name, lr_name = self._files[key]
            except KeyError:
                raise DataError(
                    f"{self.root}/index.npy refers to image {image} scale {scale}, absent from meta.json"
                ) from None
            try:
                arrays[key] = (
                    np.load(self.root / hr_name, mmap_mode="r"),
                    np.load(self.root / lr_name, mmap_mode="r"),
                )
            except (OSError, ValueError) as error:
                raise DataError(f"cannot open the images of {self.root}: {error}") from None
        return arrays[key]

    def __getitem__(self, item: int):
        hr_image, lr_image = self._pair(int(self._image[item]), int(self._scale[item]))
        y, x, p, s = int(self._y[item]), int(self._x[item]), self.patch, self.scale
        lr = lr_image[y : y + p, x : x + p]
        hr = hr_image[y * s : (y + p) * s, x * s : (x + p) * s]
        if self.augment:
            transform = int(self._rng.integers(DIHEDRAL_TRANSFORMS))
            lr, hr = dihedral(lr, transform), dihedral(hr, transform)
        target = self.targets[item]
        return to_tensor(lr), to_tensor(hr), torch.from_numpy(target) if target.ndim else int(target)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1] (a copy, so the memory map stays read-only)."""
    # one numpy pass (transpose, convert, scale): far cheaper than several small torch ops per sample
    out = np.empty((image.shape[2], image.shape[0], image.shape[1]), dtype=np.float32)
    np.divide(image.transpose(2, 0, 1), np.float32(255), out=out)
    return torch.from_numpy(out)
