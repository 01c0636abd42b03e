"""Slimmable training with a ledger: three branch widths of one family at about the cost of one network.

One network of the widest width holds every narrower branch as its leading channels (`train.slim_network`).
Each training step runs one width, in the fixed cycle widest, narrowest, widest, middle, so the widest
network gets half the steps and the branches come out of one run; `Slimmable.cut` makes a plain network of
any width from it.

This module owns the run: its `Recipe` (fixed at the start, kept with the weights) and its loop,
`train_slimmable` (`slimmable_run` from plain arguments, as `classsr train slimmable` runs it). The run keeps
its whole state in a ledger folder (`train.ledger`: the weights, fp32 or fp16 shards, and the curve), so a
run spread over many sessions or GPU leases adds to one curve. The optimiser's moments are not kept (they
would triple the file): a resumed run warms its learning rate up again over `resume_warmup` steps while
Adam's estimates refill. The data order is a function of the iteration, so a resumed run continues where the
last one stopped.

The loop takes its batches from a source (`train.slim_data.BatchSource`): a prepared folder through the
project's loader (`PreparedPairs`, the CPU's way) or photos held on the device
(`train.device_data.DevicePhotos`, a GPU's way, `benchmarks/gpu_run.py`); it validates on the central crops
of the validation photos (`train.slim_data.central_crops`). The names of those modules are importable from
here too.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classsr_cli.errors import DataError, ModelError, OutputError
from classsr_cli.train.ledger import CURVE_FILE, SHARD_PREFIX, WEIGHTS_FILE, Ledger
from classsr_cli.train.slim_data import (
    BatchSource,
    PreparedPairs,
    ValCrops,
    bicubic_psnrs,
    central_crops,
    central_square,
    crop_psnrs,
)
from classsr_cli.train.slim_network import SLIMMABLE_FAMILIES, Slimmable, slice_state, width_of_step

# the names callers have imported from this module, now kept beside it
__all__ = [
    "CURVE_FILE",
    "SHARD_PREFIX",
    "SLIMMABLE_FAMILIES",
    "WEIGHTS_FILE",
    "BatchSource",
    "Ledger",
    "PreparedPairs",
    "Recipe",
    "Slimmable",
    "ValCrops",
    "bicubic_psnrs",
    "central_crops",
    "central_square",
    "crop_psnrs",
    "slice_state",
    "slimmable_run",
    "train_slimmable",
    "width_of_step",
]


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

    On a GPU: `autocast` is the forward pass's context (e.g. `train.settings.training_autocast`; None: fp32),
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
    from classsr_cli.engine.runner import pick_device, reuse_freed_memory
    from classsr_cli.imaging.photos import list_photos
    from classsr_cli.models.registry import get_family, resolve_widths
    from classsr_cli.weights import load_weights

    family = get_family(model).name
    chosen = resolve_widths(family, widths=widths)
    reference_net = load_weights(reference, kind="base").model if reference else None
    torch_device = pick_device(device)
    if torch_device.type == "cpu":  # SRResNet on one core: 3.86 s per step against 4.50 (docs/training.md)
        reuse_freed_memory()
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
