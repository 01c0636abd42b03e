"""Device, precision and batched execution, with out-of-memory recovery."""

import copy
import ctypes
import functools
import sys

import torch
from torch import nn

from classsr_cli.engine.inference_graph import optimize_for_inference
from classsr_cli.errors import ModelError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(spec: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. Explicit devices must exist."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ModelError(f"unknown device '{spec}': use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError("--device cuda was asked for but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError("--device mps was asked for but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unsupported device '{spec}'")
    return device


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on a GPU (11 mantissa bits keep outputs within a grey level; bf16 has 8), else fp32."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if spec not in PRECISIONS:
        raise ModelError(f"unknown precision '{spec}': use auto, fp32, fp16 or bf16")
    if device.type == "cpu" and spec == "fp16":
        raise ModelError("fp16 is not supported on the CPU: use fp32 or bf16")
    return PRECISIONS[spec]


# glibc hands blocks above its mmap threshold (which adapts up to 32 MiB) back to the system as soon as they
# are freed, and trims the heap's free top above its trim threshold; the next block of that size is then
# faulted in page by page. The CPU engine allocates and frees blocks of tens to hundreds of MB every batch
# (CARN-M's features at 4x the LR size: 4 KB per LR pixel), so on a CPU it raises both, once per process.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


@functools.cache
def reuse_freed_memory() -> bool:
    """Keep freed blocks of up to MMAP_THRESHOLD bytes in the C library's heap for reuse, and up to
    TRIM_THRESHOLD bytes of free heap top, instead of giving them back to the system at once (glibc's
    `mallopt`; the whole process, from the first call on). Returns whether it applied: Linux with glibc
    only. ClassSR-CARN's engine on a 480x270 crop: 180,000 to 250,000 page faults and 0.55 to 0.84 s of
    system time per image before, none after, 9% to 21% less time (docs/engine.md). What stays in the heap
    goes back with `pipeline.release_freed_memory` (malloc_trim)."""
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): nothing to do
        return False
    raised = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(raised)


def default_batch_size(device: torch.device) -> int:
    # On a CPU one 32x32 tile nearly fills the cores and larger batches spill out of the caches: 8-16 tiles
    # ran fastest here (benchmarks/engine_speed.py). A GPU needs hundreds of tiles in flight.
    return 256 if device.type != "cpu" else 16


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class BatchRunner:
    """Runs a module over many tiles in batches on one device; halves the batch on out-of-memory."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int | None = None,
        pad_batches: bool = False,
    ):
        if batch_size is not None and batch_size < 1:
            raise ModelError(f"--batch-size must be at least 1, got {batch_size}")
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size or default_batch_size(device)
        # a short batch padded to a power of two: a few batch shapes instead of any count (see Upscaler)
        self.pad_batches = pad_batches

    def prepare(self, module: nn.Module) -> nn.Module:
        # A copy, so that the caller's model (e.g. one being trained) is untouched. Channels-last lets oneDNN
        # (CPU) and cuDNN (GPU) pick their fast kernels: about 2x for the narrow branches on a CPU.
        module = optimize_for_inference(copy.deepcopy(module).eval())
        return module.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)

    def padded_count(self, count: int) -> int:
        """Tiles a call of `count` (at most one batch) runs: with pad_batches, the next power of two."""
        if not self.pad_batches:
            return count
        return max(count, min(self.batch_size, 1 << (count - 1).bit_length()))

    def __call__(self, module: nn.Module, tiles: torch.Tensor, to_cpu: bool = True) -> torch.Tensor:
        """module(tiles) in float32, computed batch by batch on the device; on the CPU unless `to_cpu` is
        False, when it stays on the device (for callers that keep working there)."""
        outputs = []
        start = 0
        while start < tiles.shape[0]:
            chunk = tiles[start : start + self.batch_size]
            try:
                with torch.inference_mode():
                    batch = chunk.to(self.device, self.dtype, non_blocking=True)
                    count, padded = batch.shape[0], self.padded_count(batch.shape[0])
                    if padded > count:
                        batch = torch.cat([batch, batch[-1:].expand(padded - count, -1, -1, -1)])
                    result = module(batch.contiguous(memory_format=torch.channels_last))[:count]
                    outputs.append(result.float().cpu() if to_cpu else result.float())
            except Exception as error:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
                if not _is_out_of_memory(error) or self.batch_size == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)
                continue
            start += chunk.shape[0]
        return torch.cat(outputs) if outputs else tiles.new_empty(0)
