"""Training pairs drawn on the device: photos held there as the paper's scale pyramid, crops made by indexing.

`prepare-data` writes a pyramid to disk and a loader feeds the device from the CPU; on a GPU that loader is
the bottleneck for small networks. Here every photo is decoded once, moved to the device, shrunk by the
paper's factors (1.0 ... 0.6) and reduced x4 with the project's MATLAB-compatible bicubic, exactly as
`prepare-data` does (8-bit rounding after each resize, HR cropped to a multiple of 4). HR and LR stay on the
device as uint8. A batch is then a few tensor operations: positions drawn uniformly over every LR sub-image
of every scaled photo (as the prepared index samples them), one of the 8 flips/rotations per sample, and
one gather each for LR and HR. Nothing waits for the CPU.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from classsr_cli.data.augment import DIHEDRAL_TRANSFORMS, dihedral
from classsr_cli.errors import DataError
from classsr_cli.imaging.bicubic import imresize_tensor, matlab_uint8_tensor

PAPER_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6)


@dataclass
class Positions:
    """Where a batch's LR crops come from: image number, top-left LR pixel, flip/rotation code (0..7)."""

    image: torch.Tensor  # (B,) int64
    y: torch.Tensor  # (B,) int64
    x: torch.Tensor  # (B,) int64
    code: torch.Tensor  # (B,) int64


def _dihedral_sources(patch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols), each (8, patch, patch) int64: output pixel (i, j) of transform c reads crop pixel
    (rows[c, i, j], cols[c, i, j]). Read off `data.augment.dihedral` itself, so the two always agree."""
    grid = torch.arange(patch * patch).reshape(1, patch, patch)
    sources = torch.stack([dihedral(grid, code)[0] for code in range(DIHEDRAL_TRANSFORMS)])
    return (sources // patch).to(device), (sources % patch).to(device)


class _FlatImages:
    """Many (H, W, 3) uint8 images in one flat device buffer, with their offsets and sizes."""

    def __init__(self, images: list[torch.Tensor], device: torch.device):
        self.heights = torch.tensor([im.shape[0] for im in images], dtype=torch.int64, device=device)
        self.widths = torch.tensor([im.shape[1] for im in images], dtype=torch.int64, device=device)
        sizes = torch.tensor([im.numel() for im in images], dtype=torch.int64, device=device)
        self.offsets = torch.cumsum(sizes, 0) - sizes
        self.buffer = (
            torch.cat([im.reshape(-1) for im in images]) if images else torch.empty(0, device=device)
        )

    def image(self, index: int) -> torch.Tensor:
        start, height, width = (int(v[index]) for v in (self.offsets, self.heights, self.widths))
        return self.buffer[start : start + height * width * 3].view(height, width, 3)

    def gather(
        self, positions: Positions, factor: int, patch: int, sources: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """(B, 3, patch, patch) uint8, channels-last in memory: the crops at `factor` x the LR positions."""
        rows, cols = sources[0][positions.code], sources[1][positions.code]  # (B, p, p)
        width = self.widths[positions.image][:, None, None]
        y = positions.y[:, None, None] * factor + rows
        x = positions.x[:, None, None] * factor + cols
        pixel = self.offsets[positions.image][:, None, None] + (y * width + x) * 3
        index = pixel[..., None] + torch.arange(3, device=pixel.device)  # (B, p, p, 3)
        return self.buffer[index].permute(0, 3, 1, 2)


class DevicePhotos:
    """Training photos on one device as HR/LR pyramids; `draw` + `crops` make augmented (LR, HR) batches.

    photos: (H, W, 3) uint8 RGB arrays. `scales` are the paper's shrink factors (each photo is resized by
    each, then cropped to a multiple of `sr_scale` and reduced by it); `patch` is the LR crop size (HR is
    `sr_scale` x larger). Scaled photos smaller than one HR crop are left out. Raises DataError when no
    photo is large enough for one crop. Memory at the paper's scales: about 10.5 bytes per photo pixel
    (3 bytes x 3.3, the sum of the squared factors, for HR, and a sixteenth of that for LR).
    """

    def __init__(
        self,
        photos: Sequence[np.ndarray],
        device: torch.device | str,
        scales: Sequence[float] = PAPER_SCALES,
        sr_scale: int = 4,
        patch: int = 32,
    ):
        self.device = torch.device(device)
        self.sr_scale, self.patch = sr_scale, patch
        hr_images, lr_images = [], []
        for photo in photos:
            for hr, lr in pyramid(photo, self.device, scales, sr_scale):
                if lr.shape[0] >= patch and lr.shape[1] >= patch:
                    hr_images.append(hr)
                    lr_images.append(lr)
        if not lr_images:
            raise DataError(f"no photo is large enough for one {patch * sr_scale}x{patch * sr_scale} HR crop")
        self.hr = _FlatImages(hr_images, self.device)
        self.lr = _FlatImages(lr_images, self.device)
        # every LR sub-image position of every image, numbered consecutively: a uniform draw over all of them
        self._counts = (self.lr.heights - patch + 1) * (self.lr.widths - patch + 1)
        self._ends = torch.cumsum(self._counts, 0)
        self._total = int(self._ends[-1])  # read once: reading a GPU tensor each step would wait for the GPU
        self._lr_sources = _dihedral_sources(patch, self.device)
        self._hr_sources = _dihedral_sources(patch * sr_scale, self.device)

    def __len__(self) -> int:
        """The number of scaled images."""
        return len(self._counts)

    @property
    def positions(self) -> int:
        """How many distinct LR crops (before flips and rotations) there are to draw from."""
        return self._total

    @property
    def nbytes(self) -> int:
        return self.hr.buffer.numel() + self.lr.buffer.numel()

    def hr_image(self, index: int) -> torch.Tensor:
        """(H, W, 3) uint8 view of scaled image `index`."""
        return self.hr.image(index)

    def lr_image(self, index: int) -> torch.Tensor:
        return self.lr.image(index)

    def draw(self, batch: int, generator: torch.Generator) -> Positions:
        """`batch` positions, uniform over every LR sub-image, and a uniform flip/rotation for each.

        `generator` must live on this object's device."""
        number = torch.randint(
            0, self._total, (batch,), generator=generator, device=self.device, dtype=torch.int64
        )
        image = torch.searchsorted(self._ends, number, right=True)
        local = number - (self._ends[image] - self._counts[image])
        across = self.lr.widths[image] - self.patch + 1
        code = torch.randint(0, DIHEDRAL_TRANSFORMS, (batch,), generator=generator, device=self.device)
        return Positions(image, local // across, local % across, code)

    def crops(self, positions: Positions) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR, HR): float32 (B, 3, p, p) and (B, 3, 4p, 4p) in [0, 1], channels-last, flipped and rotated."""
        lr = self.lr.gather(positions, 1, self.patch, self._lr_sources)
        hr = self.hr.gather(positions, self.sr_scale, self.patch * self.sr_scale, self._hr_sources)
        return lr.float().div_(255.0), hr.float().div_(255.0)

    def batches(
        self, batch_size: int, seed: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (LR, HR) batches of `crops(draw(...))`, batch k drawn by a generator on the device seeded
        from (seed, start + k) alone, so a run resumed at step `start` continues the same sequence (the
        training loop's batch source, `train.slim_data.BatchSource`)."""
        generator = torch.Generator(self.device)
        step = start
        while True:
            generator.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]))
            yield self.crops(self.draw(batch_size, generator))
            step += 1


def pyramid(
    photo: np.ndarray, device: torch.device, scales: Sequence[float], sr_scale: int = 4
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(HR, LR)] uint8 (H, W, 3) tensors on `device`, one pair per scale, as `prepare-data` makes them."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise DataError(f"expected an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}")
    original = torch.from_numpy(np.ascontiguousarray(photo)).to(device).permute(2, 0, 1)
    pairs = []
    for factor in scales:
        scaled = original if factor == 1.0 else matlab_uint8_tensor(imresize_tensor(original, scale=factor))
        height = scaled.shape[1] // sr_scale * sr_scale
        width = scaled.shape[2] // sr_scale * sr_scale
        if height < sr_scale or width < sr_scale:
            continue
        hr = scaled[:, :height, :width]
        lr = matlab_uint8_tensor(imresize_tensor(hr, output_shape=(height // sr_scale, width // sr_scale)))
        pairs.append((hr.permute(1, 2, 0).contiguous(), lr.permute(1, 2, 0).contiguous()))
    return pairs


def fixed_crops(
    photo: np.ndarray, device: torch.device | str, count: int, size: int, sr_scale: int = 4
) -> tuple[torch.Tensor, np.ndarray]:
    """Held-out crops of one photo at scale 1.0 on an even grid: (LR float32 (N, 3, s, s) on `device`,
    HR uint8 (N, 4s, 4s, 3) numpy), N <= `count` (fewer when the photo is small). Deterministic."""
    hr, lr = pyramid(photo, torch.device(device), (1.0,), sr_scale)[0]
    if lr.shape[0] < size or lr.shape[1] < size:
        raise DataError(f"the held-out photo ({photo.shape[1]}x{photo.shape[0]}) is smaller than one crop")
    across = max(1, round(np.sqrt(count * lr.shape[1] / lr.shape[0])))
    down = max(1, count // across)
    ys = np.linspace(0, lr.shape[0] - size, down).round().astype(int)
    xs = np.linspace(0, lr.shape[1] - size, across).round().astype(int)
    lr_crops, hr_crops = [], []
    for y in ys:
        for x in xs:
            lr_crops.append(lr[y : y + size, x : x + size].permute(2, 0, 1))
            big = sr_scale * size
            hr_crops.append(hr[y * sr_scale : y * sr_scale + big, x * sr_scale : x * sr_scale + big])
    lr_batch = torch.stack(lr_crops).float().div_(255.0).contiguous(memory_format=torch.channels_last)
    return lr_batch, torch.stack(hr_crops).cpu().numpy()


class DeviceSubImages:
    """A prepared folder's sub-images (a `SubImageDataset`: one split, the stage's classes) held on the
    device, as the data source of `classsr train` there: its scaled photos stay on the device as uint8,
    and a batch is a gather by index, flipped and rotated there. Batches are those the CPU loader makes
    from the same stream of (sub-image, transform code) pairs (`train.data.ShardedStream`), to the bit.
    """

    def __init__(self, dataset, device: torch.device | str):
        self.device = torch.device(device)
        self.patch, self.sr_scale = dataset.patch, dataset.scale
        table = dataset.crop_table()
        keys = list(zip(table["image"].tolist(), table["scale"].tolist(), strict=True))
        numbers = {key: number for number, key in enumerate(sorted(set(keys)))}
        pairs = [dataset.images(*key) for key in numbers]
        self.hr = _FlatImages([self._upload(hr) for hr, _ in pairs], self.device)
        self.lr = _FlatImages([self._upload(lr) for _, lr in pairs], self.device)
        self._image = torch.tensor([numbers[key] for key in keys], dtype=torch.int64, device=self.device)
        self._y = torch.from_numpy(table["y"].astype(np.int64)).to(self.device)
        self._x = torch.from_numpy(table["x"].astype(np.int64)).to(self.device)
        # int64 classes, or (N, M) float32 route costs, as the dataset holds them
        self._cls = torch.as_tensor(table["cls"], device=self.device)
        self._lr_sources = _dihedral_sources(self.patch, self.device)
        self._hr_sources = _dihedral_sources(self.patch * self.sr_scale, self.device)

    def _upload(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(image)).to(self.device)  # a copy: the files are mapped read-only

    @staticmethod
    def nbytes(dataset) -> int:
        """Bytes the dataset's scaled photos take on a device (read from the files' headers)."""
        table = dataset.crop_table()
        keys = set(zip(table["image"].tolist(), table["scale"].tolist(), strict=True))
        return sum(hr.nbytes + lr.nbytes for hr, lr in (dataset.images(*key) for key in keys))

    def batch(self, pairs: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(LR, HR, class) of the sub-images `pairs` = [(row of the dataset, transform code)]: float32
        (B, 3, p, p) and (B, 3, sp, sp) in [0, 1] (channels-last in memory), int64 (B,) (or float32 (B, M)
        route costs), on the device."""
        index = torch.tensor([row for row, _ in pairs], dtype=torch.int64, device=self.device)
        code = torch.tensor([code for _, code in pairs], dtype=torch.int64, device=self.device)
        positions = Positions(self._image[index], self._y[index], self._x[index], code)
        lr = self.lr.gather(positions, 1, self.patch, self._lr_sources)
        hr = self.hr.gather(positions, self.sr_scale, self.patch * self.sr_scale, self._hr_sources)
        return lr.float().div_(255.0), hr.float().div_(255.0), self._cls[index]

    def batches(self, stream, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Endless batches of `batch_size` from `stream`, an iterable of (row, transform code) pairs."""
        pairs = iter(stream)
        while True:
            yield self.batch([next(pairs) for _ in range(batch_size)])
