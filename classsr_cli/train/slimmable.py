"""Slimmable training with a ledger: three branch widths of one family at about the cost of one network.

One network of the widest width holds every narrower branch as its leading channels (each weight of the
width-w network is the first entries of the widest one's along every axis), as in slimmable networks (Yu et
al., ICLR 2019) and ARM's any-time super-resolution (Chen et al., ECCV 2022). Each training step runs one
width, in the fixed cycle widest, narrowest, widest, middle, so the widest network gets half the steps and
the branches come out of one run; `cut` makes a plain network of any width from it.

The run keeps its whole state in a ledger folder meant to live in the repository, so that a run spread over
many sessions (SRResNet on one CPU core) or GPU leases (RCAN) adds to one curve. The weights come in one of
two forms, chosen when the ledger is made and kept after:
  weights.safetensors   the widest network's fp32 weights in one file, replaced in place (SRResNet)
  weights-K.safetensors the same network in fp16, in shards of at most 16 MiB (`train.packing`; RCAN-64 is
                        31 MB in fp16: two shards), all replaced together; loaded back into fp32
Either way the metadata holds the iteration, the training seconds so far and the recipe, and
  curve.jsonl           one line per window of training steps (mean L1 per width) and per validation
                        (PSNR of every width on central crops of the validation photos), and once the
                        bicubic and reference-network PSNR on the same crops
The optimiser's moments are not kept (they would triple the file): a resumed run warms its learning rate up
again over `resume_warmup` steps while Adam's estimates refill. The data order is a function of the
iteration, so a resumed run continues where the last one stopped.

The training loop takes its batches from a source (`BatchSource`): a prepared folder through the project's
loader (`PreparedPairs`, the CPU's way) or photos held on the device (`train.device_data.DevicePhotos`, a
GPU's way, `benchmarks/gpu_run.py`). A sharded ledger continued on a machine whose files do not come back
is copied out with `Ledger.export` and added to the repository's copy with `Ledger.add`.

Leading-channel slicing fits families whose layers are plain convolutions and pixel shuffles (SRResNet,
RCAN); CARN's grouped convolutions and DnCNN's batch norms do not slice this way and are refused.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from classsr_cli.errors import DataError, ModelError, OutputError

SLIMMABLE_FAMILIES = ("srresnet", "rcan")
WEIGHTS_FILE = "weights.safetensors"
CURVE_FILE = "curve.jsonl"
SHARD_PREFIX = "weights"  # a sharded ledger's files: weights-1.safetensors, weights-2.safetensors, ...


def slice_state(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The leading entries of every tensor of `state` along every axis, to the given shapes (views)."""
    sliced = {}
    for key, shape in shapes.items():
        tensor = state[key]
        fits = tensor.dim() == len(shape) and all(
            have >= want for have, want in zip(tensor.shape, shape, strict=True)
        )
        if not fits:
            raise ModelError(f"{key}: {tuple(tensor.shape)} cannot be sliced to {tuple(shape)}")
        sliced[key] = tensor[tuple(slice(0, n) for n in shape)]
    return sliced


class Slimmable(nn.Module):
    """The widest network of a family, run at any of `widths` by slicing its parameters.

    `forward(x, width)` takes LR (N, 3, h, w) in [0, 1] and gives SR (N, 3, 4h, 4w); gradients reach the
    widest network's parameters through the slices. `state_dict()` is the widest network's own, so the
    weights file loads as a plain network of that width.
    """

    def __init__(self, family: str, widths: list[int]):
        super().__init__()
        from classsr_cli.models.registry import create_base, get_family

        if family not in SLIMMABLE_FAMILIES:
            raise ModelError(
                f"slimmable training slices channels, which fits {', '.join(SLIMMABLE_FAMILIES)}, "
                f"not {get_family(family).title}"
            )
        self.family = family
        self.widths = sorted(int(w) for w in widths)
        self.net = create_base(family, self.widths[-1])
        self.scale = self.net.scale
        # a network of each narrower width, for its structure and shapes only: its own weights are unused
        self._skeletons = {w: create_base(family, w) for w in self.widths[:-1]}
        for skeleton in self._skeletons.values():
            skeleton.requires_grad_(False)
        self._shapes = {
            w: {k: v.shape for k, v in s.state_dict().items()} for w, s in self._skeletons.items()
        }

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        if width is None or width == self.widths[-1]:
            return self.net(x)
        if width not in self._shapes:
            raise ModelError(f"width {width} is not one of {self.widths}")
        tensors = dict(self.net.named_parameters())
        tensors.update(self.net.named_buffers())
        return functional_call(self._skeletons[width], slice_state(tensors, self._shapes[width]), (x,))

    def cut(self, width: int) -> nn.Module:
        """A plain network of `width` holding this one's leading channels (a copy, in eval mode)."""
        from classsr_cli.models.registry import create_base

        if width == self.widths[-1]:
            state = self.net.state_dict()
        else:
            state = slice_state(self.net.state_dict(), self._shapes[width])
        network = create_base(self.family, width)
        network.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()})
        return network.eval()

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        for skeleton in self._skeletons.values():
            skeleton.to(*args, **kwargs)
        return self


def width_of_step(iteration: int, widths: list[int]) -> int:
    """The width trained at 1-based step `iteration`: widest, narrowest, widest, middle, in turn."""
    widths = sorted(widths)
    cycle = [widths[-1], widths[0], widths[-1], widths[len(widths) // 2]] if len(widths) > 1 else widths
    return cycle[(iteration - 1) % len(cycle)]


@dataclass
class Recipe:
    """What a ledger's run trains; fixed at its start and kept in the weights file's metadata."""

    family: str
    widths: list[int]
    iters: int  # the planned length: the cosine schedule runs over it
    lr: float = 4e-4
    min_lr: float = 1e-6
    warmup: int = 1000  # steps of linear warm-up at the start of the run
    resume_warmup: int = 200  # and after every resume, while Adam's moment estimates refill
    clip: float = 1.0  # gradient norm
    batch_size: int = 16
    small_patch: int = 24  # LR patch size until small_until x iters, then the data's own (32)
    small_until: float = 0.4
    smooth_fraction: float = 0.05  # of each batch: synthetic smooth fields (train/smooth.py)
    seed: int = 0
    val_every: int = 2000
    val_crop: int = 192  # LR pixels of the central crop of each validation photo

    def lr_at(self, iteration: int, resumed_at: int | None) -> float:
        """The learning rate of 1-based step `iteration`: warm-up(s) times the cosine over `iters`."""
        progress = min(max(iteration - 1, 0) / max(1, self.iters), 1.0)
        lr = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        ramp = min(1.0, iteration / max(1, self.warmup))
        if resumed_at is not None and self.resume_warmup:
            ramp = min(ramp, (iteration - resumed_at) / self.resume_warmup)
        return lr * ramp

    def patch_at(self, iteration: int, data_patch: int) -> int:
        return self.small_patch if iteration <= self.small_until * self.iters else data_patch


@dataclass
class ValCrops:
    """Central crops of validation photos: LR float32 (h, w, 3) in [0, 1] and HR uint8 (4h, 4w, 3)."""

    names: list[str]
    lr: list[np.ndarray]
    hr: list[np.ndarray]
    reference: dict[str, list[float]] = field(default_factory=dict)  # row name -> PSNR per crop


def central_square(image: np.ndarray, side: int, scale: int = 4) -> np.ndarray:
    """The central square of (H, W, C) `image`, `side` pixels or less (a multiple of `scale`, within it)."""
    height, width = image.shape[:2]
    crop = min(side, height - height % scale, width - width % scale)
    top, left = (height - crop) // 2, (width - crop) // 2
    return np.ascontiguousarray(image[top : top + crop, left : left + crop])


def central_crops(
    photos: list[Path],
    lr_size: int,
    scale: int = 4,
    read: Callable[[Path], np.ndarray] | None = None,
) -> ValCrops:
    """The central (scale x lr_size)-pixel square of each photo as HR, and its MATLAB-bicubic LR (8-bit).

    `read` gives a photo as (H, W, 3) uint8 RGB (default: the project's reader, `imaging.photos.read_rgb8`,
    which needs pyvips); a photo that is already such a square (as `benchmarks/gpu_prepare.py` writes them)
    gives the same crop as its original."""
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8

    if read is None:
        from classsr_cli.imaging.photos import read_rgb8 as read

    names, lrs, hrs = [], [], []
    for path in photos:
        hr = central_square(read(path), lr_size * scale, scale)
        lr = matlab_uint8(imresize(hr.astype(np.float32), 1 / scale))
        names.append(path.name)
        lrs.append(lr.astype(np.float32) / 255.0)
        hrs.append(hr)
    return ValCrops(names, lrs, hrs)


@torch.no_grad()
def crop_psnrs(
    network: Callable[[torch.Tensor], torch.Tensor], crops: ValCrops, device: torch.device
) -> list:
    """RGB PSNR (dB, 8-bit output, `scale`-pixel border) of `network` run whole on each LR crop."""
    from classsr_cli.metrics import psnr
    from classsr_cli.pixels import unit_to_uint8

    values = []
    for lr, hr in zip(crops.lr, crops.hr, strict=True):
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].to(device)
        sr = network(x)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        values.append(round(psnr(unit_to_uint8(sr), hr, border=4), 4))
    return values


def bicubic_psnrs(crops: ValCrops) -> list:
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8
    from classsr_cli.metrics import psnr

    return [
        round(psnr(matlab_uint8(imresize(lr * 255.0, 4)), hr, border=4), 4)
        for lr, hr in zip(crops.lr, crops.hr, strict=True)
    ]


# -- batch sources ---------------------------------------------------------------------------------


class BatchSource(Protocol):
    """Where the training loop takes its batches from.

    `patch`: the LR side of the batches it gives. `batches(batch_size, seed, start)`: endless (LR, HR)
    pairs, float32 (B, 3, patch, patch) and (B, 3, 4 patch, 4 patch) in [0, 1], flipped and rotated; batch
    k (0-based) of a run is a function of (seed, start + k), so a run resumed at step `start` continues the
    sequence. They may live on the CPU (the loop moves them) or on the training device already.
    """

    patch: int

    def batches(
        self, batch_size: int, seed: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class PreparedPairs:
    """The training sub-images of a prepared folder (`classsr prepare-data`, every class) through the
    project's loader (`train.data.make_loader`: the order and flips are a function of the seed and the
    sample's position; on a GPU where they fit, gathered there). Raises DataError for a folder with none."""

    def __init__(self, root: Path, device: torch.device | str = "cpu"):
        from classsr_cli.train.data import open_train_set

        self.device = torch.device(device)
        # the dataset adds no flips of its own (the loader's sampler draws them), so its seed is unused
        self.dataset = open_train_set(Path(root), None, 0)
        self.patch = self.dataset.patch

    def batches(
        self, batch_size: int, seed: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from classsr_cli.train.data import make_loader

        loader = make_loader(self.dataset, batch_size, seed, 0, 1, start * batch_size, 0, self.device)
        for low_res, high_res, _ in loader:
            yield low_res, high_res


# -- the ledger ------------------------------------------------------------------------------------


class Ledger:
    """A ledger folder: the widest network's weights (with the run's state) and the curve.

    `shard_bytes`: a new ledger's form, None for one fp32 `weights.safetensors`, a size for fp16 shards
    `weights-K.safetensors` of at most that many bytes; an existing ledger keeps the form it has (shards:
    `packing.FILE_BYTES` unless given). `tags`: facts (strings, numbers, booleans) stored with each write
    of a sharded ledger, e.g. the device; `stored_tags` reads them back.
    """

    def __init__(self, folder: Path, shard_bytes: int | None = None, tags: dict | None = None):
        from classsr_cli.train.packing import FILE_BYTES

        self.folder = Path(folder)
        self.weights = self.folder / WEIGHTS_FILE
        self.curve = self.folder / CURVE_FILE
        self.tags = dict(tags or {})
        if shard_bytes is None and self.shards():
            shard_bytes = FILE_BYTES
        self.shard_bytes = shard_bytes

    @property
    def sharded(self) -> bool:
        return self.shard_bytes is not None

    def shards(self) -> list[Path]:
        """The fp16 shard files now in the folder (none for an fp32 or a new ledger)."""
        return sorted(self.folder.glob(f"{SHARD_PREFIX}-*.safetensors"))

    def read(self) -> tuple[dict, dict] | None:
        """(fp32 state dict, run state) of the ledger's weights, or None for a new ledger.

        Raises OutputError for a folder holding both forms or weights without ledger state, and WeightsError
        for shards that are missing one of their set or come from different writes."""
        from safetensors import safe_open

        shards = self.shards()
        if shards and self.weights.exists():
            raise OutputError(f"{self.folder} holds both {WEIGHTS_FILE} and fp16 shards: keep one form")
        if shards:
            return self._read_shards(shards)
        if not self.weights.exists():
            return None
        with safe_open(str(self.weights), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        if "ledger" not in meta:
            raise OutputError(f"{self.weights} holds no ledger state; is it a ledger's weights file?")
        return state, json.loads(meta["ledger"])

    def _shard_info(self, shards: list[Path]) -> tuple[str, dict]:
        from classsr_cli.train.packing import read_packed_info

        info = read_packed_info(shards)
        if len(info) != 1 or "ledger" not in next(iter(info.values())):
            raise OutputError(f"the shards in {self.folder} are not one ledger's weights")
        return next(iter(info.items()))

    def _read_shards(self, shards: list[Path]) -> tuple[dict, dict]:
        from classsr_cli.train.packing import load_packed

        name, info = self._shard_info(shards)
        network = load_packed(shards)[name]  # fp32: the fp16 values widened
        return network.state_dict(), json.loads(info["ledger"])

    def stored_tags(self) -> dict:
        """The tags stored with a sharded ledger's weights ({} for an fp32 or a new ledger)."""
        shards = self.shards()
        if not shards:
            return {}
        _, info = self._shard_info(shards)
        return {key: value for key, value in info.items() if key not in _SHARD_KEYS}

    def write(self, model: Slimmable, run_state: dict) -> list[Path]:
        """Replace the weights with `model`'s, `run_state` in the metadata; returns the files written."""
        if self.sharded:
            return self._write_shards(model, run_state)
        from classsr_cli.weights import save_model

        save_model(
            model.net,
            self.weights,
            model.family,
            stage="slimmable",
            iterations=str(run_state["iteration"]),
            ledger=json.dumps(run_state),
        )
        return [self.weights]

    def _write_shards(self, model: Slimmable, run_state: dict) -> list[Path]:
        from classsr_cli.train.packing import fp16_state, network_name, write_packed

        name = network_name(model.family, model.widths[-1])
        info = {
            "stage": "slimmable",
            "iterations": int(run_state["iteration"]),
            "ledger": json.dumps(run_state),
            **self.tags,
        }
        paths = write_packed(
            {name: fp16_state(model.net)},
            self.folder,
            SHARD_PREFIX,
            self.shard_bytes,
            generation=int(run_state["iteration"]),
            info={name: info},
        )
        for stale in set(self.shards()) - set(paths):
            stale.unlink()
        return paths

    def append(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.curve, "a") as out:
            out.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.curve.exists():
            return []
        return [json.loads(line) for line in self.curve.read_text().splitlines() if line.strip()]

    def trim(self, iteration: int) -> None:
        """Drop curve lines past `iteration`: a run killed between two saves logged steps that its resumed
        run trains (and logs) again."""
        from classsr_cli.files import write_text

        records = self.records()
        kept = [r for r in records if r.get("iter", 0) <= iteration]
        if len(kept) != len(records):
            write_text(self.curve, "".join(json.dumps(r) + "\n" for r in kept))

    def export(self, out: Path, first_line: int) -> list[Path]:
        """Copy a sharded ledger's weights and its curve lines from `first_line` (0-based) on into `out`
        (as `weights-K.safetensors` and `curve.jsonl`), all renamed into place together: what a machine
        whose disk does not come back returns for `add`. Earlier shards in `out` are removed. Returns the
        files written; OutputError for an fp32 ledger or one with no weights yet."""
        import shutil

        from classsr_cli.files import atomic_paths

        shards = self.shards()
        if not shards:
            raise OutputError(f"{self.folder} holds no fp16 shards to export")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in self.records()[first_line:])
        targets = [out / CURVE_FILE] + [out / shard.name for shard in shards]
        with atomic_paths(targets) as temps:
            temps[0].write_text(lines)
            for shard, temp in zip(shards, temps[1:], strict=True):
                shutil.copyfile(shard, temp)
        for stale in set(out.glob(f"{SHARD_PREFIX}-*.safetensors")) - set(targets):
            stale.unlink()
        return targets

    def add(self, returned: Path) -> dict:
        """Add what `export` wrote into `returned` (a call that continued this ledger elsewhere): its
        shards replace this ledger's, its curve lines are appended.

        The returned call must have started at this ledger's step (stored tag "started_at"); a folder
        already added is left as it is. Returns {"from": step, "to": step, "lines": added, "added": bool}.
        Raises OutputError when the folder holds no shards, continues another run or another step, or
        when this ledger is an fp32 one."""
        import shutil

        from classsr_cli.files import atomic_paths, write_text

        back = Ledger(returned)
        if not back.shards():
            raise OutputError(f"{returned} holds no ledger shards ({SHARD_PREFIX}-K.safetensors)")
        if self.weights.exists():
            raise OutputError(f"{self.folder} keeps its weights in one fp32 file, not in shards")
        _, back_state = back._read_shards(back.shards())
        back_tags = back.stored_tags()
        found = self.read()
        here = int(found[1]["iteration"]) if found else 0
        there = int(back_state["iteration"])
        recipe = back_state["recipe"]
        if found:
            mine = found[1]["recipe"]
            if mine["family"] != recipe["family"] or sorted(mine["widths"]) != sorted(recipe["widths"]):
                raise OutputError(
                    f"{returned} continues a {recipe['family']} run of widths {recipe['widths']}, "
                    f"{self.folder} holds {mine['family']} {mine['widths']}"
                )
        started = int(back_tags.get("started_at", -1))
        if there == here and found is not None:
            return {"from": here, "to": there, "lines": 0, "added": False}
        if started != here:
            raise OutputError(
                f"{returned} continued this run from step {started}, but {self.folder} is at step {here}: "
                "add the calls in the order they ran"
            )
        lines = [r for r in back.records() if r.get("iter", 0) <= there]
        records = self.records()
        if lines and records[-len(lines) :] != lines:  # not there yet (an earlier add stopped half-way)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text(self.curve, "".join(json.dumps(r) + "\n" for r in records + lines))
        shards = back.shards()
        targets = [self.folder / shard.name for shard in shards]
        with atomic_paths(targets) as temps:
            for shard, temp in zip(shards, temps, strict=True):
                shutil.copyfile(shard, temp)
        for stale in set(self.shards()) - set(targets):
            stale.unlink()
        return {"from": here, "to": there, "lines": len(lines), "added": True}


# the entries of a shard's stored info that are the ledger's own, not tags
_SHARD_KEYS = {"shard", "shards", "keys", "stage", "iterations", "ledger"}


# -- the loop --------------------------------------------------------------------------------------


def train_slimmable(
    recipe: Recipe,
    ledger: Ledger | Path,
    source: BatchSource,
    val_photos: list[Path],
    reference: nn.Module | None = None,
    reference_name: str = "reference",
    device: str = "cpu",
    save_minutes: float = 10.0,
    stop_at: int | None = None,
    log_every: int = 100,
    echo: Callable[[str], None] = print,
    autocast=None,
    fused: bool = False,
    deadline: float | None = None,
    min_steps: int = 0,
    validate_at_end: bool = False,
    on_save: Callable[[int], None] | None = None,
    read_photo: Callable[[Path], np.ndarray] | None = None,
    note: dict | None = None,
) -> dict:
    """Train (or continue) the slimmable run kept in `ledger` until `recipe.iters` or `stop_at` steps.

    A new ledger takes `recipe`; an existing one continues its own recipe (a differing family or widths is
    refused; a longer `iters` extends the plan). Batches come from `source` (`BatchSource`); the validation
    crops are the central ones of `val_photos`, read with `read_photo` (`central_crops`). SIGINT or SIGTERM
    saves the ledger and returns.

    On a GPU: `autocast` is the forward pass's context (e.g. `train.loop.training_autocast`; None: fp32),
    `fused` asks for Adam's fused kernel, `deadline` (time.monotonic()) ends the call once `min_steps`
    steps are done, `validate_at_end` scores the last step when it was not just scored,
    `on_save(first_line)` runs after each write of the ledger (e.g. `Ledger.export`; `first_line`: the
    index of this call's first curve line), and `note` (JSON values) is logged to the curve as a "call"
    line at the call's first step. Returns the run state: iteration, seconds, recipe and the last
    validation, plus "started_at" (the step this call began at). Raises ModelError (and keeps the last
    save) when the weights stop being finite.
    """
    from classsr_cli.train.smooth import smooth_pairs

    torch_device = torch.device(device)
    ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
    found = ledger.read()
    model = Slimmable(recipe.family, recipe.widths)
    if found is not None:
        state, run_state = found
        saved = Recipe(**run_state["recipe"])
        if saved.family != recipe.family or sorted(saved.widths) != sorted(recipe.widths):
            raise OutputError(
                f"{ledger.folder} holds a {saved.family} run of widths {saved.widths}, "
                f"not {recipe.family} {recipe.widths}"
            )
        saved.iters = max(saved.iters, recipe.iters)
        recipe = saved
        model.load_state_dict(state)
        start, seconds = int(run_state["iteration"]), float(run_state["seconds"])
        resumed_at = start
        ledger.trim(start)
    else:
        start, seconds, resumed_at = 0, 0.0, None
        ledger.folder.mkdir(parents=True, exist_ok=True)
        ledger.curve.write_text("")
    if not val_photos:
        raise DataError("no validation photos given")
    first_line = len(ledger.records())  # this call's lines start there (`Ledger.export`)

    model.to(torch_device)
    model.net.to(memory_format=torch.channels_last)
    model.train()
    adam = {"fused": True} if fused else {}
    optimizer = torch.optim.Adam(model.net.parameters(), lr=recipe.lr, betas=(0.9, 0.999), **adam)
    data_patch = source.patch
    crops = central_crops(val_photos, recipe.val_crop, model.scale, read_photo)
    records = ledger.records()
    if not any(r.get("type") == "reference" for r in records):
        row = {"type": "reference", "photos": crops.names, "crop_lr": recipe.val_crop}
        row["bicubic"] = bicubic_psnrs(crops)
        if reference is not None:
            row[reference_name] = crop_psnrs(reference.to(torch_device).eval(), crops, torch_device)
        row["means"] = {
            k: round(float(np.mean(v)), 4) for k, v in row.items() if k not in ("type", "photos", "crop_lr")
        }
        ledger.append(row)
        echo("reference on the crops: " + ", ".join(f"{k} {v:.3f}" for k, v in row["means"].items()))
    if note is not None:
        ledger.append({"type": "call", "iter": start, **note})

    stop = {"asked": False}

    def ask(signum, frame):
        stop["asked"] = True

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    session_start = time.monotonic()
    last_save = session_start
    iteration = start
    last_val: dict = {}
    window: dict[int, list[torch.Tensor]] = {}
    # the draws made on the host (window, smooth samples, their fields): on a CPU the generator of before
    generator = torch.Generator()
    end = min(recipe.iters, stop_at) if stop_at else recipe.iters

    def run_state() -> dict:
        return {
            "iteration": iteration,
            "seconds": round(seconds + time.monotonic() - session_start, 1),
            "recipe": asdict(recipe),
            "validation": last_val,
        }

    def validate() -> None:
        nonlocal last_val
        model.eval()
        result = {"type": "val", "iter": iteration, "seconds": run_state()["seconds"]}
        for width in model.widths:
            values = crop_psnrs(lambda x, w=width: model(x, w), crops, torch_device)
            result[str(width)] = {"psnr": round(float(np.mean(values)), 4), "per_photo": values}
        model.train()
        ledger.append(result)
        last_val = {"iter": iteration, **{str(w): result[str(w)]["psnr"] for w in model.widths}}
        echo(
            f"iter {iteration}: "
            + ", ".join(f"width {w} {result[str(w)]['psnr']:.3f} dB" for w in model.widths)
        )

    saved_at, diverged = start, False

    def save() -> None:
        nonlocal last_save, saved_at, diverged
        if not all(bool(torch.isfinite(p).all()) for p in model.net.parameters()):
            diverged = True
            raise ModelError(
                f"the weights are no longer finite at step {iteration}: the ledger keeps step {saved_at}"
            )
        ledger.write(model, run_state())
        last_save, saved_at = time.monotonic(), iteration
        if on_save is not None:
            on_save(first_line)

    def out_of_time() -> bool:
        return deadline is not None and iteration - start >= min_steps and time.monotonic() >= deadline

    try:
        batches = iter(source.batches(recipe.batch_size, recipe.seed, start))
        while iteration < end and not stop["asked"] and not out_of_time():
            step = iteration + 1
            width = width_of_step(step, model.widths)
            low_res, high_res = next(batches)
            generator.manual_seed(recipe.seed * 2**32 + step)
            patch = min(recipe.patch_at(step, data_patch), data_patch)
            if patch < data_patch:  # one random window per batch
                y, x = (int(v) for v in torch.randint(data_patch - patch + 1, (2,), generator=generator))
                s = model.scale
                low_res = low_res[:, :, y : y + patch, x : x + patch]
                high_res = high_res[:, :, y * s : (y + patch) * s, x * s : (x + patch) * s]
            chosen = torch.rand(low_res.shape[0], generator=generator) < recipe.smooth_fraction
            if chosen.any():
                fields = smooth_pairs(int(chosen.sum()), patch, model.scale, generator)
                low_res, high_res = low_res.clone(), high_res.clone()
                rows = chosen.nonzero()[:, 0].to(low_res.device)
                low_res[rows] = fields[0].to(low_res.device)
                high_res[rows] = fields[1].to(high_res.device)
            low_res = low_res.to(torch_device).contiguous(memory_format=torch.channels_last)
            high_res = high_res.to(torch_device)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr_at(step, resumed_at)
            with autocast if autocast is not None else nullcontext():
                output = model(low_res, width)
            loss = torch.nn.functional.l1_loss(output.float(), high_res)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip:
                torch.nn.utils.clip_grad_norm_(model.net.parameters(), recipe.clip)
            optimizer.step()
            iteration = step
            window.setdefault(width, []).append(loss.detach())  # read at the log line: no wait per step
            if step % log_every == 0:
                record = {"type": "train", "iter": step, "seconds": run_state()["seconds"]}
                record["lr"] = recipe.lr_at(step, resumed_at)
                record["patch"] = patch
                record["l1"] = {
                    str(w): round(float(torch.stack(v).double().mean()), 6) for w, v in sorted(window.items())
                }
                ledger.append(record)
                window = {}
            if recipe.val_every and step % recipe.val_every == 0:
                validate()
            if time.monotonic() - last_save >= save_minutes * 60:
                save()
        at_end = iteration >= recipe.iters or (validate_at_end and iteration > start)
        if at_end and last_val.get("iter") != iteration:
            validate()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if iteration > saved_at and not diverged:
            save()
    return {**run_state(), "started_at": start}


def slimmable_run(
    ledger_dir: Path,
    data_root: Path,
    val_folder: Path,
    model: str = "srresnet",
    widths: Sequence[int] | None = None,
    iters: int = 40000,
    stop_at: int | None = None,
    lr: float = 4e-4,
    reference: str | None = "carn",
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict:
    """`train_slimmable` from plain arguments, as `classsr train slimmable` runs it.

    `model`: the family (srresnet or rcan); `widths`: the branch widths (None: the paper's preset); the
    validation photos are those of `val_folder`; `reference`: a shipped base network by name, scored once
    on the same crops ('' or None: none), recorded as "<reference>-o"; `device`: auto, cpu, cuda or cuda:N.
    Returns `train_slimmable`'s run state with the family's name added ("family"). Raises ModelError for an
    unknown family or bad widths, WeightsError for a reference that cannot be loaded, and what
    `train_slimmable` raises.
    """
    from classsr_cli.engine.runner import pick_device
    from classsr_cli.imaging.photos import list_photos
    from classsr_cli.models.registry import get_family, resolve_widths
    from classsr_cli.weights import load_weights

    family = get_family(model).name
    chosen = resolve_widths(family, widths=widths)
    reference_net = load_weights(reference, kind="base").model if reference else None
    torch_device = pick_device(device)
    state = train_slimmable(
        Recipe(family=family, widths=list(chosen), iters=iters, lr=lr),
        ledger_dir,
        PreparedPairs(data_root, torch_device),
        list_photos(val_folder),
        reference=reference_net,
        reference_name=f"{reference}-o" if reference else "reference",
        device=str(torch_device),
        stop_at=stop_at,
        echo=echo,
    )
    return {**state, "family": family}
