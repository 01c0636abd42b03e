"""One process per device: set up from torchrun's environment, or a single process when there is none.

`torchrun --nproc_per_node N -m classsr_cli train ...` sets WORLD_SIZE, RANK and LOCAL_RANK; with more than
one process the run uses DistributedDataParallel (NCCL between GPUs, gloo between CPU processes). Rank 0 alone
writes checkpoints, logs and weights and shows progress.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from classsr_cli.engine.runner import pick_device
from classsr_cli.errors import ModelError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def pick_training_device(spec: str, local_rank: int, distributed: bool) -> torch.device:
    device = pick_device(spec)
    if device.type == "mps" and (spec or "auto").lower() == "auto":
        device = torch.device("cpu")
    if device.type == "cuda":
        # under torchrun each process takes the GPU of its local rank (counted from cuda:N if given)
        index = (device.index or 0) + (local_rank if distributed else 0)
        if index >= torch.cuda.device_count():
            raise ModelError(f"GPU {index} was asked for but only {torch.cuda.device_count()} are present")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ModelError(f"training runs on cpu or cuda, not '{spec}'")
    return device


def setup(device_spec: str = "auto") -> Context:
    """Join the process group if torchrun started several processes; pick this process's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world_size)
    device = pick_training_device(device_spec, local_rank, world_size > 1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # the user's thread count stands
        # the processes on one machine share its cores; oversubscribing them makes every process slower
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(1, local_world)))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return Context(rank, local_rank, world_size, local_world, device)


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def from_main(context: Context, produce):
    """Run `produce()` on rank 0 and hand its result (or its error) to every process.

    Files are read once, by the process that writes them, so machines need not share a filesystem.
    """
    if not context.distributed:
        return produce()
    box = [None]
    if context.is_main:
        try:
            box[0] = ("ok", produce())
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=0, device=context.device if context.device.type == "cuda" else None)
    status, value = box[0]
    if status == "error":
        raise value
    return value
