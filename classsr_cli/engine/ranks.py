"""Sharing one run's images between the processes of a torchrun launch: each image once, one summary.

`torchrun --nproc_per_node N [--nnodes ...] -m classsr_cli upscale IN/ OUT/` starts N processes per machine
and sets WORLD_SIZE, RANK and LOCAL_RANK in their environment. Rank 0 plans the run and hands the plan to
every rank (so that all agree on it, even if the folder changes meanwhile) and creates the output folders;
the images are shared by size (`balanced_shares`); each rank works on its own device (`cuda:LOCAL_RANK`
with --device auto) and the per-image results are gathered, so that rank 0 alone prints the summary.
Input and output folders must have the same paths on every machine (a shared file system).

The processes exchange only small Python objects (plans, reports, errors), never tensors, so the group uses
gloo over TCP also between GPUs: NCCL would reserve memory on every GPU, and its messages need each rank's
GPU chosen first, which is one of the things the ranks have to agree about.

Without torchrun (WORLD_SIZE unset or 1) every method here runs its work directly, as a single process.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch

from classsr_cli.engine.runner import pick_device
from classsr_cli.errors import ClasssrError, ModelError, ReportedElsewhere

T = TypeVar("T")

# How long a rank waits for the others at a meeting point. The slowest rank's share of a folder can take
# hours longer than the fastest one's; a rank that dies does not leave the others waiting, because torchrun
# stops every process of the launch when one fails.
MEETING_TIMEOUT = timedelta(days=7)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class Ranks:
    """This process's place in a torchrun launch; Ranks() is a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    # set once a step failed on every rank at once (`from_main`, `agree`): all ranks are leaving together
    failed_together: bool = field(default=False, compare=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that plans, creates folders and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device_spec(self, spec: str = "auto") -> str:
        """The --device value for this process: `spec` itself in a single process.

        Under torchrun, `spec` resolved and claimed for this process (`claim`): a CUDA device (auto where a
        GPU exists, `cuda`, `cuda:N`) becomes the GPU of this process's local rank, counted from N, as in
        training; CPU processes on one machine share its cores instead of each taking all of them.
        """
        if not self.distributed:
            return spec
        return str(self.claim(pick_device(spec)))

    def claim(self, device: torch.device) -> torch.device:
        """This process's part of the machine on `device`, the one way the engine and training take it.

        CUDA: the GPU of this process's local rank (under torchrun), counted from `device`'s index, made
        the current one; ModelError if that GPU does not exist. CPU: torch's threads set to the cores this
        process may use (`usable_cores`) shared among its machine's processes, unless OMP_NUM_THREADS is
        set (the user's count stands). Other devices as they are. Returns the device to use.
        """
        if device.type == "cuda":
            index = (device.index or 0) + (self.local_rank if self.distributed else 0)
            count = torch.cuda.device_count()
            if index >= count:
                by = f" by local rank {self.local_rank}" if self.distributed else ""
                fewer = ": start fewer processes per machine" if self.distributed else ""
                raise ModelError(f"GPU {index} was asked for{by}, but only {count} are present{fewer}")
            device = torch.device("cuda", index)
            torch.cuda.set_device(device)
        elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # oversubscribed cores make every process slower
            torch.set_num_threads(max(1, usable_cores() // max(1, self.local_world_size)))
        return device

    def from_main(self, produce: Callable[[], T]) -> T:
        """`produce()` run on rank 0 alone, its result (or its error) handed to every rank.

        Rank 0 raises its error as it is; the other ranks raise ReportedElsewhere (rank 0 reports it).
        """
        if not self.distributed:
            return produce()
        import torch.distributed as dist

        box: list = [None]
        error = None
        if self.is_main:
            try:
                box[0] = (produce(), None)
            except Exception as caught:  # noqa: BLE001 - raised below, on every rank
                error = caught
                box[0] = (None, _Failure.of(0, caught))
        dist.broadcast_object_list(box, src=0)
        value, failure = box[0]
        if failure is not None:
            self._fail_together(error, [failure])
        return value

    def agree(self, step: Callable[[], T]) -> T:
        """`step()` run on every rank; if it fails on any rank, it fails on all, so that none waits forever.

        The rank whose step failed raises its own error; rank 0 otherwise raises a ClasssrError naming the
        first rank that failed and why, and the other ranks raise ReportedElsewhere: the failure is printed
        once by rank 0 (and a programming error's traceback once more by its own rank).
        """
        if not self.distributed:
            return step()
        import torch.distributed as dist

        try:
            value, error = step(), None
        except Exception as caught:  # noqa: BLE001 - raised below, on every rank
            value, error = None, caught
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, None if error is None else _Failure.of(self.rank, error))
        failures = [failure for failure in everyone if failure is not None]
        if failures:
            self._fail_together(error, failures)
        return value

    def _fail_together(self, own: Exception | None, failures: list["_Failure"]) -> None:
        self.failed_together = True
        if own is not None and (self.is_main or not isinstance(own, ClasssrError)):
            raise own
        if self.is_main:
            first = failures[0]
            raise ClasssrError(f"rank {first.rank}: {first.message}")
        cause = own or ClasssrError(f"rank {failures[0].rank}: {failures[0].message}")
        raise ReportedElsewhere(str(cause)) from cause

    def share(self, weights: Sequence[float]) -> list[int]:
        """Indices (0..len(weights)-1, increasing) of the items this rank does: all of them in a single
        process. Every rank must pass the same weights (e.g. from `from_main`) to get disjoint shares."""
        if not self.distributed:
            return list(range(len(weights)))
        return balanced_shares(weights, self.world_size)[self.rank]

    def share_images(self, paths: Sequence[os.PathLike | str]) -> list[int]:
        """`share` weighted by each image's pixels, read from the headers by rank 0 alone."""
        if not self.distributed:
            return list(range(len(paths)))
        return self.share(self.from_main(lambda: image_pixels(paths)))

    def gather(self, mine: dict[int, T]) -> dict[int, T]:
        """Every rank's `{index: result}` merged, on every rank (so that each knows whether any failed)."""
        if not self.distributed:
            return dict(mine)
        import torch.distributed as dist

        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        merged: dict[int, T] = {}
        for part in everyone:
            merged.update(part)
        return merged


@dataclass(frozen=True)
class _Failure:
    """An error as it travels between ranks: text only, since not every exception can be pickled."""

    rank: int
    message: str

    @classmethod
    def of(cls, rank: int, error: Exception) -> "_Failure":
        if isinstance(error, ClasssrError):
            return cls(rank, str(error))
        return cls(rank, f"stopped by {type(error).__name__}: {error} (that rank printed its traceback)")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system has one, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def from_environment() -> Ranks:
    """This process's place, read from torchrun's WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE."""
    world_size = _env_int("WORLD_SIZE", 1)
    return Ranks(
        rank=_env_int("RANK", 0),
        local_rank=_env_int("LOCAL_RANK", 0),
        world_size=world_size,
        local_world_size=_env_int("LOCAL_WORLD_SIZE", world_size),
    )


@contextmanager
def joined() -> Iterator[Ranks]:
    """The process group of a torchrun launch, joined for the duration of the block; Ranks() without one.

    The group is left on the way out, also on errors, after a meeting of all ranks when the block ended
    normally or through a failure of all ranks at once (report it inside the block, before that meeting).
    A group that the caller had already joined is used and left joined. ModelError where PyTorch lacks
    torch.distributed or gloo.
    """
    ranks = from_environment()
    if not ranks.distributed:
        yield ranks
        return
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        raise ModelError("this PyTorch build lacks torch.distributed with gloo: run one process instead")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world_size, timeout=MEETING_TIMEOUT)
    try:
        yield ranks
        dist.barrier()  # no rank leaves while another still talks to it
    except BaseException:
        if ranks.failed_together:
            # Every rank is on its way out with the same failure, which rank 0 reported inside the block.
            # None may exit first: torchrun stops the others as soon as one exits with an error.
            dist.barrier()
        raise
    finally:
        if owned:
            dist.destroy_process_group()


def balanced_shares(weights: Sequence[float], parts: int) -> list[list[int]]:
    """Split item indices 0..len(weights)-1 into `parts` lists of near-equal total weight.

    Greedy, heaviest item first, each to the part with the least weight so far (then the fewest items,
    then the lowest number), so that big images do not pile up on one rank and unknown sizes (weight 0)
    are dealt out evenly. Deterministic: the same weights give the same shares on every rank. Each list is
    in increasing index order; the greatest part is at most 4/3 of the best possible (Graham's bound).
    """
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    loads = [0.0] * parts
    shares: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        part = min(range(parts), key=lambda p: (loads[p], len(shares[p]), p))
        shares[part].append(index)
        loads[part] += weights[index]
    return [sorted(share) for share in shares]


def image_pixels(paths: Sequence[os.PathLike | str]) -> list[int]:
    """Pixels (width x height) of each image from its header alone; 0 where it cannot be read (such an
    image fails at once when its turn comes, so it weighs nothing)."""
    from classsr_cli.imaging import open_image

    pixels = []
    for path in paths:
        try:
            info = open_image(path, max_pixels=None).info
            pixels.append(info.width * info.height)
        except (ClasssrError, OSError):
            pixels.append(0)
    return pixels
