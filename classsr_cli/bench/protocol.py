"""What `classsr bench` measures: the protocol (task, scale, border, noise), the test set's (HR, LR) pairs
and how each image's input is made. The package docstring (`classsr_cli.bench`) states the protocol."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classsr_cli.data.noise import DEFAULT_NOISE_SIGMA
from classsr_cli.errors import DataError

SCALE = 4
BORDER = SCALE  # SR papers crop the scale's worth of pixels from each side before PSNR


@dataclass(frozen=True)
class Protocol:
    """How inputs are made and scored: x4 upscaling (LR by bicubic) or denoising (Gaussian noise, scale 1)."""

    scale: int = SCALE
    noise_sigma: float | None = None  # denoising: noise sigma on the 0-255 scale

    def __post_init__(self):
        if (self.scale == 1) != (self.noise_sigma is not None):
            raise ValueError("a denoising protocol (scale 1) needs a noise sigma, and only it takes one")

    @property
    def denoise(self) -> bool:
        return self.scale == 1

    @property
    def border(self) -> int:
        return self.scale if self.scale > 1 else 0

    @property
    def reference(self) -> str:
        """The reference row's kind: what a user has without any network."""
        return "noisy" if self.denoise else "bicubic"

    @property
    def reference_name(self) -> str:
        return f"Noisy input (sigma {self.noise_sigma:g})" if self.denoise else "Bicubic"

    def describe(self) -> str:
        if self.denoise:
            return f"denoising, Gaussian sigma {self.noise_sigma:g}, PSNR over the whole image"
        return f"x{self.scale}, PSNR with a {self.border}-pixel border"


UPSCALE = Protocol()
MIN_LR_SIDE = 3  # a 4-pixel border crop must leave something of the HR image


def protocol_for(family: str, noise_sigma: float | None = None) -> Protocol:
    """The protocol a family is measured by: x4 upscaling, or for a denoising family (DnCNN) Gaussian noise of
    `noise_sigma` (0-255 scale; default DEFAULT_NOISE_SIGMA). DataError for a sigma outside (0, 255], or
    for a sigma given to an upscaling family (they are measured without noise)."""
    from classsr_cli.models import get_family

    if get_family(family).task == "denoise":
        sigma = DEFAULT_NOISE_SIGMA if noise_sigma is None else noise_sigma
        if not 0 < sigma <= 255:
            raise DataError(f"--noise-sigma must lie in (0, 255] (0-255 scale), got {sigma}")
        return Protocol(scale=1, noise_sigma=sigma)
    if noise_sigma is not None:
        raise DataError("--noise-sigma is for denoising models (dncnn); upscaling benches add no noise")
    return UPSCALE


# -- the test set -----------------------------------------------------------------------------------


# Where a set keeps its own LR images, first match wins: DIV2K's and BasicSR's layouts, then a plain LR/
LR_FOLDERS = ("LR_bicubic/X{scale}", "LR_bicubic/x{scale}", "LR/X{scale}", "LR/x{scale}", "LR")
_NAMES_SHOWN = 5  # unmatched files named in an error line before "and N more"


@dataclass(frozen=True)
class ImagePair:
    name: str  # the HR file's stem
    hr: Path
    lr: Path | None  # None: made from HR with bicubic (or, denoising, with noise)
    height: int  # HR size after cropping to a multiple of the scale
    width: int
    skipped: str | None = None  # why the image is not scored (too small), for the report; None: scored

    @property
    def lr_source(self) -> str:
        """ "given" (the set's own LR file) or "made" (from HR, by bicubic or by adding noise)."""
        return "given" if self.lr is not None else "made"


def _upright_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, as the reader will deliver it (EXIF rotation applied)."""
    from classsr_cli.imaging import open_image

    info = open_image(path).info  # the header only: pixels are decoded when the image's turn comes
    return info.height, info.width


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        if path.stem in found:
            raise DataError(
                f"{folder} holds two images named {path.stem}: {found[path.stem].name} and {path.name}"
            )
        found[path.stem] = path
    return found


def pair_key(stem: str, scale: int = SCALE) -> str:
    """The name an HR or LR file shares with its partner: its stem without a trailing scale marker (`x4`,
    `_x4`, `_X4`) and role marker (`_HR`, `_LR`), in either order: `bird_HR_x4` and `bird_LR_x4` give
    `bird`, `0801x4` gives `0801`, `img_001_SRF_4_HR` gives `img_001_SRF_4`."""
    scale_marker = re.compile(rf"[_\-.]?[xX]{scale}$")
    role_marker = re.compile(r"(?:^|[_\-.])(?:HR|LR|hr|lr)$")
    key = scale_marker.sub("", stem)
    key = role_marker.sub("", key)
    return scale_marker.sub("", key) or stem


def _lr_folder(root: Path, scale: int) -> Path | None:
    for pattern in LR_FOLDERS:
        folder = root / pattern.format(scale=scale)
        if folder.is_dir():
            return folder
    return None


def _names(paths: list[Path]) -> str:
    shown = ", ".join(path.name for path in paths[:_NAMES_SHOWN])
    return shown + (f" and {len(paths) - _NAMES_SHOWN} more" if len(paths) > _NAMES_SHOWN else "")


def _match_lr(hr_by_stem: dict[str, Path], lr_files: list[Path], lr_dir: Path, scale: int) -> dict[str, Path]:
    """HR stem -> its LR file: the same stem, the stem with `x4` added, or the same `pair_key`. DataError
    naming them when an LR file matches no HR image or two LR files match one."""
    by_key: dict[str, list[str]] = {}
    for stem in hr_by_stem:
        by_key.setdefault(pair_key(stem, scale), []).append(stem)
    matched: dict[str, Path] = {}
    unmatched = []
    for lr in lr_files:
        stem = lr.stem
        if stem in hr_by_stem:
            partner = stem
        elif stem.endswith(f"x{scale}") and stem[: -len(f"x{scale}")] in hr_by_stem:
            partner = stem[: -len(f"x{scale}")]
        elif len(by_key.get(pair_key(stem, scale), [])) == 1:
            partner = by_key[pair_key(stem, scale)][0]
        else:
            unmatched.append(lr)
            continue
        if partner in matched:
            raise DataError(
                f"{lr_dir}: {matched[partner].name} and {lr.name} are both LR images of "
                f"{hr_by_stem[partner].name}; keep one"
            )
        matched[partner] = lr
    if unmatched:
        raise DataError(
            f"{lr_dir}: {_names(unmatched)} {'match' if len(unmatched) > 1 else 'matches'} no HR image "
            f"(an LR file is named as its HR file, with x{scale} added or _HR made _LR); rename or remove "
            f"{'them' if len(unmatched) > 1 else 'it'}"
        )
    return matched


def find_pairs(
    dataset: str | Path,
    data_root: str | Path | None = None,
    limit: int | None = None,
    protocol: Protocol = UPSCALE,
) -> tuple[Path, list[ImagePair]]:
    """The dataset folder and its (HR, LR) pairs, sorted by name; sizes are checked from headers up front.

    A folder with HR/ (and optionally its own LR images), or a folder of HR photos, or a name looked up under
    the data root. LR images live in the first of LR_bicubic/X4, LR_bicubic/x4, LR/X4, LR/x4 and LR/ that
    exists; an LR file pairs with the HR file of the same stem, of its stem less `x4` (DIV2K: `0801x4.png`
    for `0801.png`), or of the same `pair_key` (Set5/Set14: `bird_LR_x4.png` for `bird_HR_x4.png`). An LR
    folder holding a file that pairs with no HR image is refused (DataError naming it), so that a table
    never silently mixes given and made LR. Denoising uses HR only. Images too small to score are kept as
    pairs with `skipped` set; the others are checked against their LR's size (DataError).
    """
    from classsr_cli.data.testsets import find_dataset
    from classsr_cli.imaging.photos import PHOTO_SUFFIXES, list_photos

    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    root = find_dataset(dataset, data_root)
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    scale, border = protocol.scale, protocol.border
    lr_dir = _lr_folder(root, scale) if not protocol.denoise else None
    hr_files = list_photos(hr_dir)
    if not hr_files:
        layout = "" if hr_dir != root else " (expected HR images in it, or in its HR/ folder)"
        raise DataError(f"no images in {hr_dir}{layout}; looked for {', '.join(PHOTO_SUFFIXES)}")
    hr_by_stem = _by_stem(hr_files, hr_dir)
    lr_by_stem = _match_lr(hr_by_stem, list_photos(lr_dir), lr_dir, scale) if lr_dir else {}
    names = sorted(hr_by_stem)[:limit] if limit else sorted(hr_by_stem)
    pairs = []
    for name in names:
        hr = hr_by_stem[name]
        lr = lr_by_stem.get(name)
        height, width = _upright_size(hr)
        height, width = height // scale * scale, width // scale * scale
        if min(height, width) < scale * MIN_LR_SIDE:
            reason = f"too small for x{scale} with a {border}-pixel border (under {scale * MIN_LR_SIDE} px)"
            pairs.append(ImagePair(name, hr, lr, height, width, skipped=reason))
            continue
        if lr is not None:
            lr_height, lr_width = _upright_size(lr)
            _check_lr_size(lr, (lr_height, lr_width), hr, (height, width))
        pairs.append(ImagePair(name, hr, lr, height, width))
    if all(pair.skipped for pair in pairs):
        raise DataError(f"{hr_dir}: no image large enough to score: {pairs[0].skipped}")
    return root, pairs


def _check_lr_size(lr: Path, lr_size: tuple[int, int], hr: Path, hr_size: tuple[int, int]) -> None:
    wanted = (hr_size[0] // SCALE, hr_size[1] // SCALE)
    if tuple(lr_size) != wanted:
        raise DataError(
            f"{lr}: LR is {lr_size[1]}x{lr_size[0]}, but {hr.name} cropped to a multiple of {SCALE} "
            f"({hr_size[1]}x{hr_size[0]}) needs {wanted[1]}x{wanted[0]}"
        )


def make_lr(hr: np.ndarray) -> np.ndarray:
    """LR from uint8 HR (cropped to a multiple of 4) as make-testsets stores it: bicubic x1/4, 8 bits."""
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8

    return matlab_uint8(imresize(hr.astype(np.float32), scale=1 / SCALE))


def load_pair(pair: ImagePair, protocol: Protocol = UPSCALE) -> tuple[np.ndarray, np.ndarray]:
    """(HR uint8 cropped to a multiple of the scale, input), both (h, w, 3) RGB: the input is the LR image
    (uint8), or for denoising the HR image plus noise seeded by the image's name (float32 in [0, 1] on
    1/255 steps)."""
    from classsr_cli.imaging.photos import read_rgb8

    scale = protocol.scale
    hr = read_rgb8(pair.hr)
    hr = np.ascontiguousarray(hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale])
    if hr.shape[:2] != (pair.height, pair.width):  # the header promised another size
        raise DataError(f"{pair.hr}: decoded as {hr.shape[1]}x{hr.shape[0]}, not {pair.width}x{pair.height}")
    if protocol.denoise:
        import zlib

        from classsr_cli.data.noise import noisy_image

        return hr, noisy_image(hr, protocol.noise_sigma, zlib.crc32(pair.name.encode()))
    if pair.lr is None:
        return hr, make_lr(hr)
    lr = read_rgb8(pair.lr)
    _check_lr_size(pair.lr, lr.shape[:2], pair.hr, hr.shape[:2])
    return hr, lr
