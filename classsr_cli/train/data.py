"""Training batches whose order and augmentation are a pure function of (seed, rank, sample position).

The sampler, not the dataset, draws the permutation of each epoch and the flip/rotation of each sample, so
a resumed run sees exactly the batches an uninterrupted one would have, with any number of loader workers.
On a GPU the batches are gathered there from the same stream (`make_loader`), so `classsr train --device
cuda` feeds the GPU without a CPU loader, as `benchmarks/gpu_run.py` does.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from classsr_cli.data.augment import DIHEDRAL_TRANSFORMS, dihedral
from classsr_cli.errors import DataError

# the share of a GPU's free memory that the training data may take there; the rest is the networks'
DEVICE_DATA_SHARE = 0.5


class ShardedStream(Sampler):
    """An endless stream of (index, transform code) pairs for one process, starting at sample `start`.

    Epoch e is a permutation seeded by (seed, e), the same on every process; process r of w takes every w-th
    entry, so the processes share out the data without overlap. `start` counts this process's samples.
    """

    def __init__(
        self, length: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0, augment=True
    ):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.start, self.augment = start, augment
        self.per_rank = length // world_size
        if self.per_rank < 1:
            raise DataError(f"{length} training samples cannot be shared among {world_size} processes")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
            mine = order[self.rank :: self.world_size][: self.per_rank]
            if self.augment:
                codes = np.random.default_rng([self.seed, epoch, self.rank, 1]).integers(
                    0, DIHEDRAL_TRANSFORMS, self.per_rank
                )
            else:
                codes = np.zeros(self.per_rank, dtype=np.int64)
            for position in range(offset, self.per_rank):
                yield int(mine[position]), int(codes[position])
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


class Augmented(Dataset):
    """A sub-image dataset indexed by (index, transform code): the transform is applied to LR and HR alike."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, code = key
        lr, hr, target = self.base[index]  # target: the class, or (M,) route costs
        return dihedral(torch.as_tensor(lr), code), dihedral(torch.as_tensor(hr), code), target


def open_train_set(root: Path, classes: list[int] | None, seed: int, route_costs: bool = False) -> Dataset:
    """The prepared training sub-images of the given classes (0-based, simple -> hard; None: all); with
    `route_costs`, each sample's third item is its (M,) route costs (`data.dataset.SubImageDataset`)."""
    from classsr_cli.data.dataset import SubImageDataset

    # flips and rotations come from the sampler (see the module note), so the dataset does not add its own
    dataset = SubImageDataset(
        root, split="train", classes=classes, augment=False, seed=seed, route_costs=route_costs
    )
    if len(dataset) == 0:
        which = "any class" if classes is None else f"class {', '.join(str(c) for c in classes)}"
        raise DataError(f"{root} holds no training sub-images of {which}")
    return dataset


def _fits_on(device: torch.device, dataset: Dataset) -> bool:
    from classsr_cli.train.device_data import DeviceSubImages

    free, _ = torch.cuda.mem_get_info(device)
    return DeviceSubImages.nbytes(dataset) <= DEVICE_DATA_SHARE * free


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    start: int,
    workers: int,
    device: torch.device,
    on_device: bool | None = None,
) -> Iterable:
    """An endless source of (lr, hr, target) batches for this process, beginning at sample `start`; target:
    the classes, or route costs (`open_train_set`).

    On a GPU where the dataset's scaled photos fit in DEVICE_DATA_SHARE of its free memory, they are held
    there and each batch is gathered there (`train.device_data.DeviceSubImages`): the very batches the CPU
    loader makes, with no loader in the way. `on_device` chooses either (None: as just said); `workers`
    counts the CPU loader's processes.
    """
    stream = ShardedStream(len(dataset), seed, rank, world_size, start)
    if on_device is None:
        on_device = device.type == "cuda" and _fits_on(device, dataset)
    if on_device:
        from classsr_cli.train.device_data import DeviceSubImages

        return DeviceSubImages(dataset, device).batches(stream, batch_size)
    return DataLoader(
        Augmented(dataset),
        batch_size=batch_size,
        sampler=stream,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=True,
    )
