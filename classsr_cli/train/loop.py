"""The training loop shared by the three stages: schedule, checkpoints, validation, logs and progress."""

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text
from torch import nn
from torch.utils.data import Dataset

from classsr_cli.data.noise import add_noise
from classsr_cli.engine.ranks import usable_cores
from classsr_cli.errors import ModelError, OutputError, WeightsError
from classsr_cli.train import distributed
from classsr_cli.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from classsr_cli.train.data import make_loader
from classsr_cli.train.losses import LossWeights, classsr_loss, image_loss
from classsr_cli.train.smooth import smooth_pairs
from classsr_cli.train.validation import load_val_photos, validate

# a class taking more than this share of a window's sub-images means the Class-Module is collapsing
COLLAPSE_SHARE = 0.9
DISPLAY_SECONDS = 0.5
PRECISIONS = ("auto", "fp32", "bf16")  # of the forward pass (training_autocast)


@dataclass
class Settings:
    """The resolved settings of one stage (options given on the command line, else the checkpoint's, else
    the stage's defaults)."""

    iters: int
    batch_size: int  # global: split evenly across processes
    lr: float
    seed: int = 0
    min_lr: float = 1e-7
    loss_weights: LossWeights = field(default_factory=LossWeights)
    val_every: int = 5000  # 0: validate at the end only
    val_crop: int | None = 192
    val_batch_size: int | None = None
    checkpoint_minutes: float = 5.0
    log_every: int = 100
    workers: int | None = None  # None: chosen for the device
    channels_last: bool = True  # NHWC: 1.3-2x faster training steps on a CPU too (narrow CARN branches most)
    precision: str = "auto"  # of the forward pass: auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16
    noise_sigma: float | None = None  # denoising data: Gaussian noise (0-255 scale); None: the data's sigma
    # denoising: the share of each batch left clean (target = input), so that a denoiser given a clean area
    # leaves it as it is instead of "removing" noise that is not there (a tint on flat colours otherwise)
    clean_fraction: float = 0.0
    # the share of each batch replaced by synthetic smooth fields (`train/smooth.py`): smooth input should
    # come back smooth, without the faint pattern of the scale's period that photos alone leave
    smooth_fraction: float = 0.0

    def to_record(self) -> dict:
        record = asdict(self)
        record["loss_weights"] = asdict(self.loss_weights)
        return record


@dataclass
class Stage:
    """What one stage trains."""

    name: str  # checkpoint and log name: branch1..M, base, classifier, joint
    family: str
    model: nn.Module  # trained and saved: a ClassSR model or one network
    trainable: list[nn.Parameter]
    dataset: Dataset
    output: Path
    classify: bool  # the ClassSR training forward with the three losses; otherwise one network and L1
    frozen: list[nn.Module] = field(default_factory=list)  # kept in eval mode while the rest trains
    metadata: dict = field(default_factory=dict)


@dataclass
class StageResult:
    stage: str
    iters: int
    start_iter: int
    weights: str
    validation: dict
    class_fractions: list[float] | None
    seconds: float


# -- settings and checkpoints ----------------------------------------------------------------------


def checkpoint_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.ckpt"


def refuse_existing_run(run_dir: Path, name: str) -> None:
    path = checkpoint_path(run_dir, name)
    if path.exists():
        raise OutputError(f"{path} exists: pass --resume to continue that run, or choose another --out")


def open_checkpoint(run_dir: Path, name: str, resume: bool, context: distributed.Context) -> dict | None:
    """The stage's checkpoint when resuming; refuses to start over an existing run without --resume."""
    path = checkpoint_path(run_dir, name)

    def read():
        if not resume:
            refuse_existing_run(run_dir, name)
        return load_checkpoint(path) if path.exists() else None

    return context.from_main(read)


def resolve_settings(options: dict, checkpoint: dict | None, defaults: dict) -> Settings:
    """Each setting from the command line when given (not None), else from the checkpoint, else the default.

    Loss weights come as options w_image, w_classes, w_average and w_labels, each resolved on its own.
    """
    saved = dict(checkpoint.get("options", {})) if checkpoint else {}
    values = {}
    for name in Settings.__dataclass_fields__:
        if name == "loss_weights":
            continue
        for source in (options, saved, defaults):
            if source.get(name) is not None:
                values[name] = source[name]
                break
    saved_weights = saved.get("loss_weights") or {}
    weights = {}
    for name in LossWeights.__dataclass_fields__:
        for value in (options.get(f"w_{name}"), saved_weights.get(name), defaults.get(f"w_{name}")):
            if value is not None:
                weights[name] = float(value)
                break
    if values.get("precision", "auto") not in PRECISIONS:
        raise ModelError(f"unknown --precision '{values['precision']}': use {', '.join(PRECISIONS)}")
    return Settings(**values, loss_weights=LossWeights(**weights))


def _noise_sigma(model: nn.Module, settings: Settings, data_root: Path) -> float | None:
    """The Gaussian noise a denoising stage adds to its inputs (0-255 scale); None for upscaling data.

    Refuses data prepared for another task or scale than the model's."""
    from classsr_cli.data.dataset import input_noise

    data_sigma = input_noise(data_root, getattr(model, "scale", 4))
    if data_sigma is None:
        for option, value in (
            ("--noise-sigma", settings.noise_sigma),
            ("--clean-fraction", settings.clean_fraction),
        ):
            if value:
                raise ModelError(f"{option} is for denoising data; {data_root} was prepared for upscaling")
        return None
    sigma = settings.noise_sigma if settings.noise_sigma is not None else data_sigma
    if not sigma or not 0 < float(sigma) <= 255:
        raise ModelError(f"--noise-sigma must lie in (0, 255] (0-255 scale), got {sigma}")
    return float(sigma)


def training_autocast(precision: str, device: torch.device):
    """The forward pass's autocast: bf16 keeps fp32's range, so no loss scaling is needed. A CPU gets bf16
    only on request: it nearly halved CARN's step time on a CPU with bf16 instructions, untried elsewhere."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def cosine_lr(iteration: int, settings: Settings) -> float:
    """The learning rate of 0-based step `iteration`: cosine from lr down to min_lr over the run."""
    return cosine_at(min(iteration, settings.iters) / max(1, settings.iters), settings.lr, settings.min_lr)


def cosine_at(progress: float, lr: float, min_lr: float) -> float:
    """The cosine schedule at `progress` (0 = start, 1 = end, clipped to that range): lr down to min_lr."""
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers(device: torch.device, local_world: int) -> int:
    per_process = max(1, usable_cores() // max(1, local_world))
    if device.type == "cuda":
        return min(8, max(1, per_process - 1))
    # on a CPU the loader's worker competes with the training threads: only worth it with cores to spare
    return 1 if per_process > 2 else 0


# -- interruption ----------------------------------------------------------------------------------


class _StopFlag:
    requested = False


@contextmanager
def graceful_stop():
    """Ctrl-C or SIGTERM asks the loop to stop after the current iteration (a second one stops at once)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def ask(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- logging ---------------------------------------------------------------------------------------


class RunLog:
    """RUN/<stage>.jsonl: one JSON record per line ("train" windows and "val" results), rank 0 only."""

    def __init__(self, path: Path, keep_until: int | None):
        self.path = Path(path)
        kept = []
        if keep_until is not None and self.path.exists():
            # a resumed run repeats the iterations after its checkpoint: drop what the killed run logged there
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("iter", 0) <= keep_until:
                        kept.append(line)
                except ValueError:
                    continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")


class Window:
    """Running sums of the loss terms and class counts since the last log line, kept on the device."""

    def __init__(self, device: torch.device, num_classes: int):
        self.device, self.num_classes = device, num_classes
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.counts = torch.zeros(max(1, self.num_classes), dtype=torch.long, device=self.device)

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor], probs: torch.Tensor | None) -> None:
        for name, value in {"loss": total, **terms}.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        if probs is not None:
            self.counts += torch.bincount(probs.argmax(dim=1), minlength=self.num_classes)
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {name: float(value) / max(1, self.steps) for name, value in self.sums.items()}

    def fractions(self) -> list[float] | None:
        if not self.num_classes:
            return None
        counts = self.counts.cpu().double()
        return (counts / counts.sum().clamp(min=1)).tolist()


class _TrainingProgress(Progress):
    """A progress bar with the running losses and class fractions on a line of their own below it."""

    stats = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.stats:
            yield Text(self.stats, overflow="fold")


def _describe(means: dict[str, float], fractions: list[float] | None) -> str:
    text = " ".join(f"{name} {value:.4g}" for name, value in means.items())
    if fractions:
        text += " | classes " + "/".join(f"{share:.0%}" for share in fractions)
    return text


# -- the loop --------------------------------------------------------------------------------------


def _set_modes(model: nn.Module, frozen: list[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()


def training_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    low_res: torch.Tensor,
    high_res: torch.Tensor,
    classify: bool,
    loss_weights: LossWeights,
    world_size: int = 1,
    autocast=None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """One step: the ClassSR forward and its three losses (or one network and L1), backward, update.

    With a zero Image-Loss weight the branches are not run: a Class-Module learning the prepared classes
    alone then trains at its own cost (a CARN stage 2 step drops from seconds to a fraction of one)."""
    with autocast or nullcontext():
        output = net(low_res, mix=loss_weights.image > 0) if classify else net(low_res)
    if classify:
        sr, probs = output
        total, terms = classsr_loss(sr, high_res, probs, loss_weights, world_size, labels)
    else:
        probs = None
        total = image_loss(output, high_res)
        terms = {"l1": total}
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return total, terms, probs


def run_stage(
    stage: Stage,
    settings: Settings,
    run_dir: Path,
    data_root: Path,
    context: distributed.Context,
    checkpoint: dict | None = None,
    console: Console | None = None,
    on_iteration: Callable[[int, nn.Module], None] | None = None,
) -> StageResult:
    """Train `stage` to `settings.iters` iterations (continuing `checkpoint` if given); save its weights.

    `on_iteration(iteration, model)` runs after every iteration on every process; a KeyboardInterrupt raised
    there stops the run as Ctrl-C does, with a checkpoint of the iterations done.
    """
    from classsr_cli.weights import save_model

    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    device = context.device
    if settings.batch_size % context.world_size:
        raise OutputError(
            f"--batch-size {settings.batch_size} must divide evenly among {context.world_size} processes"
        )
    local_batch = settings.batch_size // context.world_size
    model = stage.model.to(device)
    channels_last = settings.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(stage.trainable, lr=settings.lr, betas=(0.9, 0.999))

    start_iter, data_position, elapsed, last_val = 0, 0, 0.0, {}
    if checkpoint is not None:
        if checkpoint.get("stage") != stage.name:
            raise WeightsError(f"the checkpoint is of stage {checkpoint.get('stage')}, not {stage.name}")
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            reason = str(error).splitlines()[0]
            raise WeightsError(f"the checkpoint does not fit this model (other widths?): {reason}") from None
        start_iter = int(checkpoint["iteration"])
        data_position = int(checkpoint.get("data_position", start_iter * local_batch))
        elapsed = float(checkpoint.get("history", {}).get("seconds", 0.0))
        last_val = dict(checkpoint.get("history", {}).get("validation", {}))
        if context.is_main:
            restore_rng(checkpoint["rng"])
        else:
            seed_everything(settings.seed + 7919 * context.rank + start_iter)
    else:
        seed_everything(settings.seed + 7919 * context.rank)

    net = model
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    workers = (
        settings.workers
        if settings.workers is not None
        else default_workers(device, context.local_world_size)
    )
    loader = make_loader(
        stage.dataset,
        local_batch,
        settings.seed,
        context.rank,
        context.world_size,
        data_position,
        workers,
        device,
    )
    num_classes = getattr(model, "num_classes", 0) if stage.classify else 0
    window = Window(device, num_classes)
    log = (
        RunLog(run_dir / f"{stage.name}.jsonl", start_iter if checkpoint is not None else None)
        if context.is_main
        else None
    )
    photos = None
    autocast = training_autocast(settings.precision, device)
    noise_sigma = _noise_sigma(model, settings, data_root)
    settings.noise_sigma = noise_sigma  # recorded in checkpoints: a resume adds the same noise
    noise = torch.Generator(device=device) if noise_sigma else None
    if settings.smooth_fraction and stage.classify:
        raise ModelError("--smooth-fraction is for single networks: smooth fields have no class to learn")
    smooth = torch.Generator(device=device) if settings.smooth_fraction else None

    def save(iteration: int) -> None:
        if not context.is_main:
            return
        save_checkpoint(
            checkpoint_path(run_dir, stage.name),
            {
                "stage": stage.name,
                "family": stage.family,
                "kind": "classsr" if hasattr(model, "num_classes") else "base",
                "widths": list(getattr(model, "widths", [getattr(model, "width", 0)])),
                "iteration": iteration,
                "iters": settings.iters,
                "data_position": data_position + (iteration - start_iter) * local_batch,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "schedule": {"lr": settings.lr, "min_lr": settings.min_lr, "total": settings.iters},
                "rng": rng_state(),
                "options": settings.to_record(),
                "history": {"seconds": training_seconds(), "validation": last_val},
            },
        )

    def training_seconds() -> float:
        """Wall seconds spent on this stage so far, over every resumed session."""
        return round(elapsed + (time.monotonic() - session_start), 1)

    def run_validation(iteration: int) -> None:
        nonlocal photos, last_val
        if context.is_main:
            if photos is None:
                photos = load_val_photos(
                    data_root, settings.val_crop, getattr(model, "scale", 4), noise_sigma
                )
            result = validate(model, photos, device, settings.val_batch_size)
            _set_modes(model, stage.frozen)
            if result:
                last_val = {"iter": iteration, **result}
                log.write({"type": "val", **last_val, "seconds": training_seconds()})
                text = f"{stage.name} iter {iteration}: val PSNR {result['psnr']:.3f} dB"
                text += f" (Y {result['psnr_y']:.3f})"
                if stage.classify:
                    fractions = "/".join(f"{share:.0%}" for share in result["class_fractions"])
                    text += f", FLOPs {result['flops_ratio']:.1%}, classes {fractions}"
                console.print(text, highlight=False)
        distributed.barrier(context)

    def train_step(low_res: torch.Tensor, high_res: torch.Tensor, classes, iteration: int) -> tuple:
        low_res = low_res.to(device, non_blocking=True)
        high_res = high_res.to(device, non_blocking=True)
        # fields and noise are functions of (seed, process, iteration), so that a resume repeats them
        draw = (settings.seed * 2**32 + iteration) * context.world_size + context.rank
        if smooth is not None:
            smooth.manual_seed(draw + 2**62)  # not the noise's sequence
            chosen = torch.rand(low_res.shape[0], generator=smooth, device=device) < settings.smooth_fraction
            if chosen.any():
                scale = high_res.shape[-1] // low_res.shape[-1]
                fields = smooth_pairs(int(chosen.sum()), low_res.shape[-1], scale, smooth, device)
                low_res, high_res = low_res.clone(), high_res.clone()
                low_res[chosen], high_res[chosen] = fields
        if noise is not None:  # fresh noise every step
            noise.manual_seed(draw)
            noisy = add_noise(low_res, noise_sigma, noise)
            if settings.clean_fraction:
                clean = torch.rand(low_res.shape[0], generator=noise, device=device) < settings.clean_fraction
                noisy[clean] = low_res[clean]
            low_res = noisy
        if channels_last:
            low_res = low_res.contiguous(memory_format=torch.channels_last)
        return training_step(
            net,
            optimizer,
            low_res,
            high_res,
            stage.classify,
            settings.loss_weights,
            context.world_size,
            autocast,
            classes.to(device, non_blocking=True) if stage.classify else None,
        )

    collapsed = False
    train_fractions = None

    def log_window(iteration: int, lr_now: float) -> None:
        """One "train" line in the log: the window's mean losses and class fractions; warn on collapse."""
        nonlocal collapsed, train_fractions
        means, fractions = window.means(), window.fractions()
        train_fractions = fractions
        record = {"type": "train", "iter": iteration, "lr": lr_now, **means, "class_fractions": fractions}
        log.write({**record, "seconds": training_seconds()})
        share = max(fractions) if fractions else 0.0
        if share >= COLLAPSE_SHARE and not collapsed:
            console.print(
                f"warning: {share:.0%} of sub-images go to branch {fractions.index(share) + 1}; "
                f"if it persists, raise --w-average (now {settings.loss_weights.average:g})",
                style="yellow",
                highlight=False,
            )
        collapsed = share >= COLLAPSE_SHARE
        window.reset()

    progress = _TrainingProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not context.is_main,
    )
    session_start = time.monotonic()
    last_save = session_start
    last_display = 0.0
    completed = start_iter
    batches = None
    _set_modes(model, stage.frozen)
    try:
        with graceful_stop() as stop, progress:
            task = progress.add_task(stage.name, total=settings.iters, completed=start_iter, speed="")
            batches = iter(loader)  # one iterator for the whole run: persistent workers, no epoch restarts
            for iteration in range(start_iter + 1, settings.iters + 1):
                lr_now = cosine_lr(iteration - 1, settings)
                for group in optimizer.param_groups:
                    group["lr"] = lr_now
                total, terms, probs = train_step(*next(batches), iteration)
                completed = iteration
                window.add(total, terms, probs)

                if context.is_main:
                    now = time.monotonic()
                    done_here = iteration - start_iter
                    if now - last_display >= DISPLAY_SECONDS or iteration == settings.iters:
                        speed = done_here / max(1e-9, now - session_start)
                        progress.stats = _describe(window.means(), window.fractions())
                        progress.update(task, completed=iteration, speed=f"{speed:.2f} it/s")
                        last_display = now
                    if iteration % settings.log_every == 0 or iteration == settings.iters:
                        log_window(iteration, lr_now)
                    if now - last_save >= settings.checkpoint_minutes * 60 and iteration < settings.iters:
                        save(iteration)
                        last_save = time.monotonic()
                if settings.val_every and iteration % settings.val_every == 0 and iteration < settings.iters:
                    run_validation(iteration)
                if on_iteration is not None:
                    on_iteration(iteration, model)
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        # stopped between iterations: keep everything done so far
        if completed > start_iter:
            save(completed)
            console.print(
                f"{stage.name}: stopped at iteration {completed}; continue with --resume", style="yellow"
            )
        raise
    finally:
        batches = None  # dropping the iterator stops the loader's worker processes

    finished_here = completed > start_iter
    if finished_here or not last_val:
        run_validation(settings.iters)
    save(settings.iters)
    if context.is_main:
        val_text = {f"val_{k}": f"{v:.4f}" for k, v in last_val.items() if isinstance(v, float)}
        if noise_sigma:  # what a denoiser was trained for
            val_text["noise_sigma"] = f"{noise_sigma:g}"
        save_model(
            model,
            stage.output,
            stage.family,
            stage=stage.name,
            iterations=str(settings.iters),
            **stage.metadata,
            **val_text,
        )
    distributed.barrier(context)
    seconds = elapsed + (time.monotonic() - session_start)
    return StageResult(
        stage=stage.name,
        iters=settings.iters,
        start_iter=start_iter,
        weights=str(stage.output),
        validation=last_val,
        class_fractions=last_val.get("class_fractions", train_fractions) if stage.classify else None,
        seconds=seconds,
    )
