"""The stage runner shared by the three stages: one stage trained from its settings (or continued from its
checkpoint) to its last iteration, with its checkpoints, validations, log lines and progress; its weights
saved at the end.

`run_stage` runs a `_StageRun` through its steps: set up (model, optimizer, resumed state, data), train
(`training_step` on each batch once `_StageRun.batch` has added the smooth fields and noise the settings ask
for), finish (last validation, checkpoint, weights). What the steps use lives beside this module: the
settings, schedule and seeds in `train/settings.py`, the log, loss window, progress bar and stop requests in
`train/monitor.py`, the checkpoint files in `train/checkpoint.py`, validation in `train/validation.py`.
"""

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import Dataset

from classsr_cli.data.noise import add_noise
from classsr_cli.errors import ModelError, OutputError, WeightsError
from classsr_cli.train import distributed
from classsr_cli.train.checkpoint import (
    checkpoint_path,
    open_checkpoint,
    refuse_existing_run,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from classsr_cli.train.data import make_loader
from classsr_cli.train.losses import LossWeights, classsr_loss, image_loss
from classsr_cli.train.monitor import (
    COLLAPSE_SHARE,
    DISPLAY_SECONDS,
    RunLog,
    TrainingProgress,
    Window,
    describe_window,
    graceful_stop,
)
from classsr_cli.train.settings import (
    PRECISIONS,
    Settings,
    cosine_at,
    cosine_lr,
    default_workers,
    resolve_settings,
    seed_everything,
    stage_noise_sigma,
    training_autocast,
)
from classsr_cli.train.smooth import smooth_pairs
from classsr_cli.train.validation import load_val_photos, validate

# the names callers have imported from this module, now kept beside it
__all__ = [
    "COLLAPSE_SHARE",
    "DISPLAY_SECONDS",
    "PRECISIONS",
    "RunLog",
    "Settings",
    "Stage",
    "StageResult",
    "Window",
    "checkpoint_path",
    "cosine_at",
    "cosine_lr",
    "default_workers",
    "graceful_stop",
    "open_checkpoint",
    "refuse_existing_run",
    "resolve_settings",
    "run_stage",
    "seed_everything",
    "training_autocast",
    "training_step",
]


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
    run = _StageRun(stage, settings, Path(run_dir), data_root, context, console or Console(stderr=True))
    run.resume(checkpoint)
    run.open_data(checkpoint)
    run.train(on_iteration)
    return run.finish()


class _StageRun:
    """One call of `run_stage`: the stage's model, optimizer, data and bookkeeping, and its steps."""

    def __init__(
        self,
        stage: Stage,
        settings: Settings,
        run_dir: Path,
        data_root: Path,
        context: distributed.Context,
        console: Console,
    ):
        self.stage, self.settings, self.run_dir, self.data_root = stage, settings, run_dir, data_root
        self.context, self.console = context, console
        self.device = device = context.device
        if settings.batch_size % context.world_size:
            raise OutputError(
                f"--batch-size {settings.batch_size} must divide evenly among {context.world_size} processes"
            )
        self.local_batch = settings.batch_size // context.world_size
        model = stage.model.to(device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.Adam(stage.trainable, lr=settings.lr, betas=(0.9, 0.999))
        self.start_iter, self.data_position, self.elapsed, self.last_val = 0, 0, 0.0, {}
        self.photos = None  # the validation photos, read at the first validation
        self.collapsed = False  # the last log window's classes were collapsing
        self.train_fractions = None  # the last log window's class fractions
        self.session_start = time.monotonic()
        self.completed = 0

    def resume(self, checkpoint: dict | None) -> None:
        """Load `checkpoint` (model, optimizer, position, history, random state) or seed a fresh run."""
        stage, settings, context = self.stage, self.settings, self.context
        if checkpoint is None:
            seed_everything(settings.seed + 7919 * context.rank)
            return
        if checkpoint.get("stage") != stage.name:
            raise WeightsError(f"the checkpoint is of stage {checkpoint.get('stage')}, not {stage.name}")
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            reason = str(error).splitlines()[0]
            raise WeightsError(f"the checkpoint does not fit this model (other widths?): {reason}") from None
        self.start_iter = int(checkpoint["iteration"])
        if self.start_iter > settings.iters:
            raise WeightsError(
                f"{stage.name}: the checkpoint is at iteration {self.start_iter}, past --iters "
                f"{settings.iters}: give --iters {self.start_iter} or more to continue it"
            )
        self.data_position = int(checkpoint.get("data_position", self.start_iter * self.local_batch))
        self.elapsed = float(checkpoint.get("history", {}).get("seconds", 0.0))
        self.last_val = dict(checkpoint.get("history", {}).get("validation", {}))
        if context.is_main:
            restore_rng(checkpoint["rng"])
        else:
            seed_everything(settings.seed + 7919 * context.rank + self.start_iter)

    def open_data(self, checkpoint: dict | None) -> None:
        """The network as trained (DDP across processes), the loader from the run's data position, the log,
        the loss window, and the generators of the smooth fields and the noise."""
        stage, settings, context, device, model = (
            self.stage,
            self.settings,
            self.context,
            self.device,
            self.model,
        )
        self.net = model
        if context.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        workers = (
            settings.workers
            if settings.workers is not None
            else default_workers(device, context.local_world_size)
        )
        self.loader = make_loader(
            stage.dataset,
            self.local_batch,
            settings.seed,
            context.rank,
            context.world_size,
            self.data_position,
            workers,
            device,
        )
        num_classes = getattr(model, "num_classes", 0) if stage.classify else 0
        self.window = Window(device, num_classes)
        self.log = (
            RunLog(self.run_dir / f"{stage.name}.jsonl", self.start_iter if checkpoint is not None else None)
            if context.is_main
            else None
        )
        self.autocast = training_autocast(settings.precision, device)
        self.noise_sigma = stage_noise_sigma(model, settings, self.data_root)
        settings.noise_sigma = self.noise_sigma  # recorded in checkpoints: a resume adds the same noise
        self.noise = torch.Generator(device=device) if self.noise_sigma else None
        if settings.smooth_fraction and stage.classify:
            raise ModelError("--smooth-fraction is for single networks: smooth fields have no class to learn")
        self.smooth = torch.Generator(device=device) if settings.smooth_fraction else None
        if settings.zero_mean_filters and not stage.classify:
            raise ModelError("--zero-mean-filters is for the Class-Module: stages 2 and 3")
        self.center_filters()

    def center_filters(self) -> None:
        """With `zero_mean_filters`, project the Class-Module's first-layer kernels back to zero mean."""
        if self.settings.zero_mean_filters:
            self.model.classifier.center_input_filters_()

    def training_seconds(self) -> float:
        """Wall seconds spent on this stage so far, over every resumed session."""
        return round(self.elapsed + (time.monotonic() - self.session_start), 1)

    def save(self, iteration: int) -> None:
        """The checkpoint of `iteration` (rank 0 writes it)."""
        if not self.context.is_main:
            return
        stage, settings, model = self.stage, self.settings, self.model
        save_checkpoint(
            checkpoint_path(self.run_dir, stage.name),
            {
                "stage": stage.name,
                "family": stage.family,
                "kind": "classsr" if hasattr(model, "num_classes") else "base",
                "widths": list(getattr(model, "widths", [getattr(model, "width", 0)])),
                "iteration": iteration,
                "iters": settings.iters,
                "data_position": self.data_position + (iteration - self.start_iter) * self.local_batch,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "schedule": {"lr": settings.lr, "min_lr": settings.min_lr, "total": settings.iters},
                "rng": rng_state(),
                "options": settings.to_record(),
                "history": {"seconds": self.training_seconds(), "validation": self.last_val},
            },
        )

    def validate(self, iteration: int) -> None:
        """Score the model on the validation photos (rank 0), log and print the result; all ranks wait."""
        stage, model = self.stage, self.model
        if self.context.is_main:
            if self.photos is None:
                self.photos = load_val_photos(
                    self.data_root, self.settings.val_crop, getattr(model, "scale", 4), self.noise_sigma
                )
            result = validate(model, self.photos, self.device, self.settings.val_batch_size)
            _set_modes(model, stage.frozen)
            if result:
                self.last_val = {"iter": iteration, **result}
                self.log.write({"type": "val", **self.last_val, "seconds": self.training_seconds()})
                text = f"{stage.name} iter {iteration}: val PSNR {result['psnr']:.3f} dB"
                text += f" (Y {result['psnr_y']:.3f})"
                if stage.classify:
                    fractions = "/".join(f"{share:.0%}" for share in result["class_fractions"])
                    text += f", FLOPs {result['flops_ratio']:.1%}, classes {fractions}"
                self.console.print(text, highlight=False)
        distributed.barrier(self.context)

    def batch(self, low_res: torch.Tensor, high_res: torch.Tensor, iteration: int) -> tuple:
        """The batch of `iteration` on the device, with the smooth fields and noise the settings ask for."""
        settings, context, device = self.settings, self.context, self.device
        low_res = low_res.to(device, non_blocking=True)
        high_res = high_res.to(device, non_blocking=True)
        # fields and noise are functions of (seed, process, iteration), so that a resume repeats them
        draw = (settings.seed * 2**32 + iteration) * context.world_size + context.rank
        smooth, noise = self.smooth, self.noise
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
            noisy = add_noise(low_res, self.noise_sigma, noise)
            if settings.clean_fraction:
                clean = torch.rand(low_res.shape[0], generator=noise, device=device) < settings.clean_fraction
                noisy[clean] = low_res[clean]
            low_res = noisy
        if settings.channels_last:
            low_res = low_res.contiguous(memory_format=torch.channels_last)
        return low_res, high_res

    def step(self, low_res: torch.Tensor, high_res: torch.Tensor, classes, iteration: int) -> tuple:
        low_res, high_res = self.batch(low_res, high_res, iteration)
        result = training_step(
            self.net,
            self.optimizer,
            low_res,
            high_res,
            self.stage.classify,
            self.settings.loss_weights,
            self.context.world_size,
            self.autocast,
            classes.to(self.device, non_blocking=True) if self.stage.classify else None,
        )
        self.center_filters()
        return result

    def log_window(self, iteration: int, lr_now: float) -> None:
        """One "train" line in the log: the window's mean losses and class fractions; warn on collapse."""
        window = self.window
        means, fractions = window.means(), window.fractions()
        self.train_fractions = fractions
        record = {"type": "train", "iter": iteration, "lr": lr_now, **means, "class_fractions": fractions}
        self.log.write({**record, "seconds": self.training_seconds()})
        share = max(fractions) if fractions else 0.0
        if share >= COLLAPSE_SHARE and not self.collapsed:
            self.console.print(
                f"warning: {share:.0%} of sub-images go to branch {fractions.index(share) + 1}; "
                f"if it persists, raise --w-average (now {self.settings.loss_weights.average:g})",
                style="yellow",
                highlight=False,
            )
        self.collapsed = share >= COLLAPSE_SHARE
        window.reset()

    def train(self, on_iteration: Callable[[int, nn.Module], None] | None) -> None:
        """The iterations from the start (or the checkpoint's) to the last, with the progress bar, log lines,
        timed checkpoints and validations; Ctrl-C, SIGTERM or a KeyboardInterrupt from `on_iteration` saves
        the iterations done and raises KeyboardInterrupt."""
        stage, settings, context, start_iter = self.stage, self.settings, self.context, self.start_iter
        progress = TrainingProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not context.is_main,
        )
        self.session_start = session_start = time.monotonic()
        last_save = session_start
        last_display = 0.0
        self.completed = start_iter
        batches = None
        _set_modes(self.model, stage.frozen)
        try:
            with graceful_stop() as stop, progress:
                task = progress.add_task(stage.name, total=settings.iters, completed=start_iter, speed="")
                batches = iter(self.loader)  # one iterator for the whole run: persistent workers, no restarts
                for iteration in range(start_iter + 1, settings.iters + 1):
                    lr_now = cosine_lr(iteration - 1, settings)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr_now
                    total, terms, probs = self.step(*next(batches), iteration)
                    self.completed = iteration
                    self.window.add(total, terms, probs)

                    if context.is_main:
                        now = time.monotonic()
                        done_here = iteration - start_iter
                        if now - last_display >= DISPLAY_SECONDS or iteration == settings.iters:
                            speed = done_here / max(1e-9, now - session_start)
                            progress.stats = describe_window(self.window.means(), self.window.fractions())
                            progress.update(task, completed=iteration, speed=f"{speed:.2f} it/s")
                            last_display = now
                        if iteration % settings.log_every == 0 or iteration == settings.iters:
                            self.log_window(iteration, lr_now)
                        if now - last_save >= settings.checkpoint_minutes * 60 and iteration < settings.iters:
                            self.save(iteration)
                            last_save = time.monotonic()
                    if (
                        settings.val_every
                        and iteration % settings.val_every == 0
                        and iteration < settings.iters
                    ):
                        self.validate(iteration)
                    if on_iteration is not None:
                        on_iteration(iteration, self.model)
                    if stop.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            # stopped between iterations: keep everything done so far
            if self.completed > start_iter:
                self.save(self.completed)
                self.console.print(
                    f"{stage.name}: stopped at iteration {self.completed}; continue with --resume",
                    style="yellow",
                )
            raise
        finally:
            batches = None  # dropping the iterator stops the loader's worker processes

    def finish(self) -> StageResult:
        """The last validation (unless the checkpoint's is of the last iteration), the last checkpoint and the
        stage's weights file with its validation in the metadata."""
        from classsr_cli.weights import save_model

        stage, settings, context = self.stage, self.settings, self.context
        finished_here = self.completed > self.start_iter
        if finished_here or not self.last_val:
            self.validate(settings.iters)
        self.save(settings.iters)
        if context.is_main:
            val_text = {f"val_{k}": f"{v:.4f}" for k, v in self.last_val.items() if isinstance(v, float)}
            if self.noise_sigma:  # what a denoiser was trained for
                val_text["noise_sigma"] = f"{self.noise_sigma:g}"
            save_model(
                self.model,
                stage.output,
                stage.family,
                stage=stage.name,
                iterations=str(settings.iters),
                **stage.metadata,
                **val_text,
            )
        distributed.barrier(context)
        seconds = self.elapsed + (time.monotonic() - self.session_start)
        return StageResult(
            stage=stage.name,
            iters=settings.iters,
            start_iter=self.start_iter,
            weights=str(stage.output),
            validation=self.last_val,
            class_fractions=self.last_val.get("class_fractions", self.train_fractions)
            if stage.classify
            else None,
            seconds=seconds,
        )
