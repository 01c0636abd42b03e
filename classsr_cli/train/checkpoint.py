"""Training checkpoints: everything a resumed run needs, written atomically, readable with weights_only.

A checkpoint is one file, RUN/<stage>.ckpt, a dict of tensors, numbers, strings and lists:
  format, stage, family, kind, widths   what was trained
  iteration, iters                      iterations done and planned
  data_position                         training samples this process has consumed (the data order)
  model, optimizer                      state dicts
  schedule                              {"lr", "min_lr", "total"}: the cosine schedule is a formula of the
                                        iteration, so this is its whole state
  rng                                   torch (CPU and CUDA), numpy and python random states
  options                               the run's settings (iters, batch size, lr, seed, loss weights...)
  history                               the last validation result and the elapsed training time
No numpy objects and no pickled classes, so `torch.load(weights_only=True)` reads it. A stage starts over an
existing checkpoint only when resuming it (`open_checkpoint`).
"""

import random
from pathlib import Path

import numpy as np
import torch

from classsr_cli.errors import OutputError, WeightsError
from classsr_cli.files import atomic_path
from classsr_cli.train import distributed

FORMAT = "classsr-train-1"


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    version, words, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": [version, list(words), gauss],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a temporary file beside `path`, then rename it: a crash never leaves a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        torch.save({"format": FORMAT, **payload}, temp)


def load_checkpoint(path: Path) -> dict:
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - corrupt files and hostile pickles alike are refused
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a classsr training checkpoint")
    return payload


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
