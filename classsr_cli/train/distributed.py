"""One process per device: set up from torchrun's environment, or a single process when there is none.

`torchrun --nproc_per_node N -m classsr_cli train ...` sets WORLD_SIZE, RANK and LOCAL_RANK; with more than
one process the run uses DistributedDataParallel (NCCL between GPUs, gloo between CPU processes). Rank 0 alone
writes checkpoints, logs and weights and shows progress. A process's place in the launch is the engine's
`Ranks` (`engine/ranks.py`), read from the same variables, with the device it trains on.
"""

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from classsr_cli.engine.ranks import Ranks, from_environment
from classsr_cli.engine.runner import pick_device, reuse_freed_memory
from classsr_cli.errors import ModelError


@dataclass
class Context(Ranks):
    """This process's place in a torchrun launch (`Ranks`: rank, is_main, from_main...) and its device."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def pick_training_device(spec: str) -> torch.device:
    """The device `spec` names for training: cpu or cuda (auto never picks mps); ModelError otherwise."""
    device = pick_device(spec)
    if device.type == "mps" and (spec or "auto").lower() == "auto":
        device = torch.device("cpu")
    if device.type not in ("cpu", "cuda"):
        raise ModelError(f"training runs on cpu or cuda, not '{spec}'")
    return device


def setup(device_spec: str = "auto") -> Context:
    """Join the process group if torchrun started several processes; pick and claim this process's device
    (`Ranks.claim`: under torchrun the GPU of its local rank, or its share of the CPU cores); on a CPU,
    freed blocks are kept for reuse (`reuse_freed_memory`)."""
    ranks = from_environment()
    device = ranks.claim(pick_training_device(device_spec))
    if device.type == "cpu":
        reuse_freed_memory()
    if ranks.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size)
    return Context(
        rank=ranks.rank,
        local_rank=ranks.local_rank,
        world_size=ranks.world_size,
        local_world_size=ranks.local_world_size,
        device=device,
    )


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()
