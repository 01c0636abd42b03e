"""One call on a GPU machine: CUDA checks, every network of the four families trained, the engine timed.

    python -m benchmarks.gpu_run --out DIR [--seconds 540] [--families fsrcnn,carn,srresnet,rcan]
    python -m benchmarks.gpu_run --out DIR --dry-run          # the same job on the CPU, tiny, in minutes
    python -m benchmarks.gpu_run --collect 2 --out DIR        # what did not fit in the first call's files
    python -m benchmarks.gpu_run --out DIR --engine-only --photos PHOTOS   # step 4 alone, no training
    python -m benchmarks.gpu_run --export DIR [DIR ...] --to RUN   # as the project's weights files
    python -m benchmarks.gpu_run --families rcan --resume LEDGER --out DIR [--seconds 540] [--dry-run]
    python -m benchmarks.gpu_run --add-back DIR --resume LEDGER   # a ledger call's files into the ledger

The job, inside --seconds of wall time:
1. CUDA checks: `pytest -m cuda tests/test_cuda.py` (they skip without a GPU).
2. Training: the photos (--photos) are decoded once and held on the device as the paper's pyramid (scales
   1.0 to 0.6, MATLAB-compatible bicubic LR made there, `classsr_cli.train.device_data`); the photo that
   covers most of a 4K frame is held out (see `engine_pixels`). Every network of the families at the
   paper's branch widths is trained on all the other photos with the project's stage-1 recipe (L1, Adam,
   cosine learning rate to 1e-7, flips and rotations), bf16 autocast and channels-last on a GPU. A probe
   times a few steps of each network at each candidate batch size and keeps the smallest batch within 10%
   of the best throughput; the training seconds are then shared out (see `share_seconds`) and the networks
   trained interleaved, a few seconds at a time, so that all of them advance together and a call stopped
   early leaves every one partly trained.
3. Every --checkpoint-seconds and at the end: every network in fp16, packed into files of at most 16 MiB
   (a large network split into shards), in parts that fit one call's output folder; part 1 and a JSON of
   per-network steps, seconds, samples, final loss and held-out PSNR go to --out, every part to --keep (on
   the machine's disk) for `--collect`. A SIGTERM stops training, writes the last checkpoint and exits.
4. The engine: `Upscaler` and `classsr upscale` on a 4K-class input (an LR of the held-out photo of at most
   960x540, the paper's Test4K size), ClassSR against `--branch M`, with and without reading and encoding,
   output megapixels per second, batched against one tile per call; the table is printed last.

With --resume LEDGER the whole call goes to one family instead: it continues the slimmable run kept in the
ledger folder (`classsr_cli.train.slimmable`: widths as leading channels of the widest network, fp16 shards)
with `train_slimmable`'s own loop, fed from the photos on the device, bf16 autocast, channels-last and fused
Adam on a GPU; a new ledger's batch is the one the probe picks (`ledger_batches`), kept from then on. No
checks and no engine table. It stops itself 15 s before --seconds. The ledger's shards (two files for
RCAN-64) and this call's curve lines go to --out (`Ledger.export`) at every checkpoint; `--add-back` puts
them into the repository's copy of the ledger. A dry run trains a copy of the ledger (or a new one) in
--keep and never writes the ledger itself; it prints the bytes that travel to the GPU machine
(`transfer_plan`: checkout, ledger at its written size, .gpu) and stops when they pass 64 MiB.
"""

import argparse
import concurrent.futures
import contextlib
import copy
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from classsr_cli.errors import ClasssrError, DataError, OutputError
from classsr_cli.files import atomic_open, write_json
from classsr_cli.imaging.photos import list_photos
from classsr_cli.metrics import psnr
from classsr_cli.models import create_base, get_family
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.train.device_data import PAPER_SCALES, DevicePhotos, fixed_crops, pyramid
from classsr_cli.train.loop import cosine_at, graceful_stop, training_autocast, training_step
from classsr_cli.train.losses import LossWeights
from classsr_cli.train.packing import (
    FILE_BYTES,
    MIB,
    export_networks,
    fp16_state,
    network_name,
    pack,
    plan_parts,
    write_packed,
)

ROOT = Path(__file__).resolve().parent.parent
FORMAT = "classsr-gpu-run-1"
REPORT = "gpu_run.json"
LOG = "gpu_run.log"
FAMILIES = ("fsrcnn", "carn", "srresnet", "rcan")
MIN_LR = 1e-7  # the project's stage-1 schedule ends there
# An output folder takes 8 files of 16 MiB, 64 MiB in all: 6 weight files (the JSON and the log are the
# other two; packing.FILE_BYTES keeps a margin under 16 MiB for the header estimate), and 2 MiB of the 64
# left for the JSON and log.
OUT_FILES = 6
PART_BYTES = 62 * MIB
# what travels to the GPU machine: the checkout's files (tracked, and untracked ones git does not ignore) and
# the folders brought along (.gpu), 64 MiB in all
CARRY_LIMIT = 64 * MIB
CARRIED = ROOT / ".gpu"
LOG_BYTES = MIB  # the log's tail that goes to the output folder
# part 1 takes networks in this order: the families with no shipped weights first, the largest first
PRIORITY = ("srresnet", "rcan", "carn", "fsrcnn")
FLOOR_SHARE = 0.02  # of the training seconds, per network, before the rest is shared by cost
UNTRAINED_ROUTING_BUDGET = 0.6  # as the README's engine table routes an untrained Class-Module


@dataclass(frozen=True)
class Recipe:
    """Stage-1 settings of a family on a GPU: learning rate and the batch sizes the probe chooses from."""

    lr: float
    batches: tuple[int, ...]


# FSRCNN and CARN: the project's stage-1 rate, with which its shipped networks were trained. SRResNet and
# RCAN, deeper and never trained here: BasicSR's batch-16 rates (2e-4, 1e-4) doubled for larger batches.
RECIPES = {
    "fsrcnn": Recipe(1e-3, (64, 256)),
    "carn": Recipe(1e-3, (32, 128)),
    "srresnet": Recipe(4e-4, (32, 128)),
    "rcan": Recipe(2e-4, (16, 64)),
}


@dataclass(frozen=True)
class Profile:
    """How big the job is: the GPU call, or the dry run on a CPU."""

    patch: int  # LR crop size (the paper's 32)
    photos: int | None  # how many photos (the smallest files), None: all
    batches: tuple[int, ...] | None  # None: each family's recipe
    probe_warmup: int
    probe_steps: int
    min_steps: int  # per network, even past its seconds
    chunk_seconds: float  # one network trains this long before the next takes over
    held_out_crops: int
    held_out_size: int  # LR pixels
    engine_size: tuple[int, int]  # largest LR input of the engine table, (width, height)
    batch_compare_size: int  # LR crop on which batched and one-tile-per-call runs are compared
    engine_seconds: float  # kept back for the engine table
    final_seconds: float  # kept back for the last checkpoint
    checks_seconds: float
    # a ledger call (--resume): validation photos used, their central LR crop, steps between validations
    # and between curve lines
    val_photos: int | None = None
    val_crop: int = 192
    val_every: int = 2000
    log_every: int = 100


GPU = Profile(32, None, None, 2, 3, 1, 10.0, 16, 64, (960, 540), 256, 60.0, 15.0, 120.0)
DRY = Profile(16, 2, (2,), 1, 1, 2, 2.0, 2, 24, (64, 48), 64, 25.0, 5.0, 90.0, 2, 16, 2, 1)


# -- small helpers ---------------------------------------------------------------------------------


class Log:
    """Prints and keeps a copy in a file (its tail goes to the output folder)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        with open(self.path, "a") as out:
            out.write(text + "\n")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def copy_atomically(source: Path, target: Path, tail_bytes: int | None = None) -> None:
    with atomic_open(target) as out, open(source, "rb") as data:
        if tail_bytes is not None:
            data.seek(max(0, source.stat().st_size - tail_bytes))
        shutil.copyfileobj(data, out)


def remove_own_files(folder: Path) -> None:
    """Removes an earlier run's files (its parts may have had more files, or other networks)."""
    from classsr_cli.train.slimmable import CURVE_FILE, SHARD_PREFIX

    for pattern in ("part*-*.safetensors", f"{SHARD_PREFIX}-*.safetensors", CURVE_FILE, REPORT, LOG):
        for path in folder.glob(pattern):
            path.unlink()


def read_photo(path: Path) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB, EXIF orientation applied (OpenCV's default); None when it cannot be decoded."""
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if pixels is None else np.ascontiguousarray(pixels[:, :, ::-1])


# -- step 1: CUDA checks ---------------------------------------------------------------------------


def run_checks(timeout: float, log: Log) -> dict:
    """The `cuda` tests in a child process; their output goes to the log."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider"]
    start = time.monotonic()
    log(f"$ {' '.join(command[2:])}")
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        output, code = f"{error.stdout or ''}\ntimed out after {timeout:.0f} s", None
    lines = [line for line in output.strip().splitlines() if line.strip()]
    log("\n".join(lines[-60:]))
    return {
        "returncode": code,
        "summary": lines[-1] if lines else "",
        "seconds": round(time.monotonic() - start, 1),
        "passed": code == 0,  # skipped tests (no GPU) pass too
    }


# -- step 2: data, probe, split, training ----------------------------------------------------------


def engine_pixels(photo: np.ndarray) -> int:
    """How much of a 3840x2160 (4K) output the photo covers: the held-out photo is the one that covers most,
    so that the engine table's input comes closest to the paper's Test4K."""
    return min(photo.shape[1], 3840) * min(photo.shape[0], 2160)


def load_photos(folder: Path, count: int | None, log: Log) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """[(name, pixels)] of the readable photos (the `count` smallest files when given), and the unreadable."""
    if not folder.is_dir():
        raise DataError(f"no photo folder {folder}: copy the training photos there or pass --photos DIR")
    paths = list_photos(folder)
    if count is not None:
        paths = sorted(paths, key=lambda p: (p.stat().st_size, p.name))[:count]
    if len(paths) < 2:
        raise DataError(f"{folder} holds {len(paths)} photo(s); one is held out, so at least 2 are needed")
    workers = min(16, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # OpenCV decodes without the GIL
        decoded = list(pool.map(read_photo, paths))
    photos = [(p.name, pixels) for p, pixels in zip(paths, decoded, strict=True) if pixels is not None]
    failed = [p.name for p, pixels in zip(paths, decoded, strict=True) if pixels is None]
    if failed:
        log(f"could not decode {len(failed)} photo(s): {', '.join(failed)}")
    return photos, failed


@dataclass
class Network:
    """One network in training, and its record."""

    family: str
    width: int
    model: torch.nn.Module
    lr: float
    generator: torch.Generator
    params: int
    batch: int = 0
    budget: float = 0.0  # seconds of training it is given
    probe: dict = field(default_factory=dict)  # batch -> seconds per step
    steps: int = 0
    seconds: float = 0.0
    samples: int = 0
    loss: float | None = None
    held_out_psnr: float | None = None
    restarts: int = 0
    lr_scale: float = 1.0
    optimizer: torch.optim.Optimizer | None = None
    good_state: dict | None = None

    @property
    def name(self) -> str:
        return network_name(self.family, self.width)

    def record(self) -> dict:
        return {
            "family": self.family,
            "width": self.width,
            "params": self.params,
            "batch": self.batch,
            "lr": self.lr * self.lr_scale,
            "probe_seconds_per_step": {str(b): s for b, s in self.probe.items()},
            "budget_seconds": round(self.budget, 1),
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "samples": self.samples,
            "loss": self.loss,
            "held_out_psnr": self.held_out_psnr,
            "restarts": self.restarts,
        }


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]  # CARN's and RCAN's mean shifts are fixed
    # one fused kernel instead of a few per parameter: RCAN has over a thousand parameter tensors
    return torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.999), fused=device.type == "cuda")


def build_networks(families: list[str], device: torch.device, seed: int) -> list[Network]:
    networks = []
    for family in families:
        for width in get_family(family).widths_for(3):
            torch.manual_seed(seed + len(networks))
            model = create_base(family, width).to(device, memory_format=torch.channels_last).train()
            generator = torch.Generator(device).manual_seed(seed + 1000 + len(networks))
            params = sum(p.numel() for p in model.parameters())
            networks.append(Network(family, width, model, RECIPES[family].lr, generator, params))
    return networks


def probe(network: Network, photos: DevicePhotos, batches, profile: Profile, device, autocast) -> None:
    """Seconds per training step at each candidate batch, on a copy; keeps the smallest batch whose
    throughput is within 10% of the best (more updates for the same samples)."""
    weights = LossWeights()
    for batch in batches:
        model = copy.deepcopy(network.model)
        optimizer = make_optimizer(model, network.lr, device)
        generator = torch.Generator(device).manual_seed(batch)
        try:
            for step in range(profile.probe_warmup + profile.probe_steps):
                if step == profile.probe_warmup:
                    synchronize(device)
                    start = time.perf_counter()
                low, high = photos.crops(photos.draw(batch, generator))
                training_step(model, optimizer, low, high, False, weights, autocast=autocast)
            synchronize(device)
            network.probe[batch] = (time.perf_counter() - start) / profile.probe_steps
        except torch.cuda.OutOfMemoryError:
            network.probe[batch] = None
        finally:
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    speeds = {b: b / s for b, s in network.probe.items() if s}
    if not speeds:
        raise ClasssrError(f"{network.name}: no batch size fits in memory")
    best = max(speeds.values())
    network.batch = min(b for b, speed in speeds.items() if speed >= 0.9 * best)


def share_seconds(networks: list[Network], seconds: float) -> str:
    """Give each network a floor of FLOOR_SHARE of the seconds, and the rest in proportion to its seconds per
    sample, so that every network sees about the same number of training samples: an expensive network (the
    RCAN widths most) gets the time it needs to see as much of the data as a cheap one. Returns the rule."""
    floor = FLOOR_SHARE * seconds if FLOOR_SHARE * len(networks) < 1 else seconds / len(networks)
    rest = max(0.0, seconds - floor * len(networks))
    costs = {n.name: n.probe[n.batch] / n.batch for n in networks}
    total = sum(costs.values())
    for network in networks:
        network.budget = floor + rest * costs[network.name] / total
    return (
        f"{FLOOR_SHARE:.0%} of the training seconds to each network, the rest in proportion to its probed "
        "seconds per sample: every network sees about the same number of samples"
    )


def held_out_psnr(model: torch.nn.Module, lr_crops: torch.Tensor, hr_crops: np.ndarray) -> float:
    """Mean RGB PSNR (border 4, 8-bit output) of the network on the held-out crops, in fp32."""
    model.eval()
    with torch.no_grad():
        sr = model(lr_crops).float().permute(0, 2, 3, 1).cpu().numpy()
    model.train()
    return float(
        np.mean([psnr(unit_to_uint8(out), hr, border=4) for out, hr in zip(sr, hr_crops, strict=True)])
    )


def run_chunk(network: Network, photos: DevicePhotos, seconds: float, hard_end: float, context) -> None:
    """Train `network` for about `seconds` (at least up to its minimum steps), then account for it. A chunk
    whose mean loss is not finite is undone: weights back to the last good chunk, fresh Adam state, half the
    learning rate."""
    device, autocast, profile, stop = (
        context["device"],
        context["autocast"],
        context["profile"],
        context["stop"],
    )
    weights = LossWeights()
    start = time.monotonic()
    total = torch.zeros((), device=device)
    steps = 0
    while True:
        progress = (network.seconds + time.monotonic() - start) / max(network.budget, 1e-9)
        for group in network.optimizer.param_groups:
            group["lr"] = cosine_at(progress, network.lr * network.lr_scale, MIN_LR)
        low, high = photos.crops(photos.draw(network.batch, network.generator))
        loss, _, _ = training_step(
            network.model, network.optimizer, low, high, False, weights, autocast=autocast
        )
        total += loss.detach()
        steps += 1
        now = time.monotonic()
        if stop.requested or (now >= hard_end and network.steps + steps >= profile.min_steps):
            break
        if now - start >= seconds and network.steps + steps >= profile.min_steps:
            break
    mean = float(total) / steps  # waits for the device
    network.seconds += time.monotonic() - start
    if not math.isfinite(mean):
        network.model.load_state_dict(network.good_state)
        network.lr_scale /= 2
        network.optimizer = make_optimizer(network.model, network.lr * network.lr_scale, device)
        network.restarts += 1
        context["log"](
            f"{network.name}: loss {mean} after {steps} steps; restarted at half the learning rate"
        )
        return
    network.steps += steps
    network.samples += steps * network.batch
    network.loss = mean
    network.good_state = {k: v.detach().clone() for k, v in network.model.state_dict().items()}


# -- step 3: checkpoints ---------------------------------------------------------------------------


class Checkpoints:
    """Writes every network (fp16, packed) to the keep folder, part 1 and the report to the output folder."""

    def __init__(self, networks: list[Network], parts: list[list[str]], keep: Path, out: Path, log: Log):
        self.networks, self.parts, self.keep, self.out, self.log = networks, parts, keep, out, log
        self.generation = 0

    def write(self, report: dict, held_out, device_label: str) -> None:
        self.generation += 1
        if held_out is not None:
            for network in self.networks:
                network.held_out_psnr = round(held_out_psnr(network.model, *held_out), 4)
        states = {n.name: fp16_state(n.model) for n in self.networks}
        info = {
            n.name: {
                "trained_on": f"{device_label}, {n.seconds:.0f} s, {n.steps} steps",
                "steps": n.steps,
                "seconds": round(n.seconds, 1),
                "samples": n.samples,
                "batch": n.batch,
                "held_out_psnr": n.held_out_psnr,
            }
            for n in self.networks
        }
        files = []
        for index, part in enumerate(self.parts, start=1):
            subset = {name: states[name] for name in part}
            paths = write_packed(subset, self.keep, f"part{index}", FILE_BYTES, self.generation, info)
            files.append({"part": index, "networks": part, "files": [p.name for p in paths]})
        report["generation"] = self.generation
        report["networks"] = {n.name: n.record() for n in self.networks}
        report["parts"] = files
        for name in files[0]["files"]:
            copy_atomically(self.keep / name, self.out / name)
        self.save_report(report)

    def save_report(self, report: dict) -> None:
        write_json(self.keep / REPORT, report)
        write_json(self.out / REPORT, report)
        copy_atomically(self.keep / LOG, self.out / LOG, tail_bytes=LOG_BYTES)


# -- step 4: the engine ----------------------------------------------------------------------------


def engine_table(
    networks: list[Network], held_out: np.ndarray, device: torch.device, profile: Profile, deadline, keep, log
) -> list[dict]:
    """Per family: ClassSR and `--branch M` through `Upscaler`, `classsr upscale` file to file, and batched
    against one tile per call on a crop. A measurement is skipped within `margin` seconds of the deadline
    (monotonic clock): the profile's final_seconds or 5% of the time left, whichever is less."""
    margin = min(profile.final_seconds, 0.05 * max(0.0, deadline - time.monotonic()))
    # as `classsr upscale` runs: the engine turns cuDNN's autotuning on itself, around its own fixed shapes
    torch.backends.cudnn.benchmark = False
    import cv2

    from benchmarks.engine_speed import timed
    from classsr_cli.engine import Upscaler
    from classsr_cli.models import ClassSR
    from classsr_cli.weights import load_weights, save_model, shipped_entry

    folder = keep / "engine"
    folder.mkdir(parents=True, exist_ok=True)
    lr = pyramid(held_out, device, (1.0,))[0][1].cpu().numpy()  # the held-out photo's x4 LR
    width, height = min(profile.engine_size[0], lr.shape[1]), min(profile.engine_size[1], lr.shape[0])
    top, left = (lr.shape[0] - height) // 2, (lr.shape[1] - width) // 2
    lr = np.ascontiguousarray(lr[top : top + height, left : left + width])
    source = folder / "input.png"
    cv2.imwrite(str(source), lr[:, :, ::-1])
    lr = lr.astype(np.float32) / 255.0
    small = lr[: profile.batch_compare_size, : profile.batch_compare_size]
    output_mp = 16 * width * height / 1e6
    cli = _cli_runner()
    rows = []
    for family in dict.fromkeys(n.family for n in networks):
        if time.monotonic() > deadline - margin:
            log(f"engine: no time left for {family}")
            break
        if shipped_entry(family, "classsr"):
            model, routing, budget = load_weights(family, kind="classsr").model, "shipped Class-Module", None
        else:
            torch.manual_seed(0)
            branches = [copy.deepcopy(n.model).float().cpu().eval() for n in networks if n.family == family]
            model = ClassSR(branches).eval()
            routing = f"untrained Class-Module held to {UNTRAINED_ROUTING_BUDGET:.0%} of the FLOPs"
            budget = UNTRAINED_ROUTING_BUDGET
        row = {"family": family, "routing": routing, "input": f"{width}x{height}", "output_mp": output_mp}
        classsr = Upscaler(model, str(device), flops_budget=budget)
        classsr_s, tally = timed(classsr, lr, 2)
        row["classsr_s"] = round(classsr_s, 4)
        row.update(tiles=tally.tiles, class_counts=tally.class_counts)
        row["flops_ratio"] = round(tally.flops_ratio(classsr.plan), 4)
        row["batch_size"] = classsr.runner.batch_size
        row["classsr_mp_per_s"] = round(output_mp / row["classsr_s"], 2)
        if (
            time.monotonic() < deadline - margin
        ):  # pieces of exact shapes, the CPU's way: what fixing them buys
            exact_s, _ = timed(Upscaler(model, str(device), flops_budget=budget, exact_shapes=True), lr, 2)
            row["classsr_exact_shapes_s"] = round(exact_s, 4)
        if time.monotonic() < deadline - margin:
            base_s, _ = timed(Upscaler(model, str(device), branch=model.num_classes), lr, 2)
            row["base_s"] = round(base_s, 4)
            row["base_mp_per_s"] = round(output_mp / row["base_s"], 2)
        if cli is not None and time.monotonic() < deadline - margin:
            weights = save_model(model, folder / f"{family}.safetensors", family)
            arguments = ["upscale", str(source), str(folder / "output.png"), "--weights", str(weights)]
            arguments += ["--device", str(device), "--overwrite", "--json"]
            if budget is not None:
                arguments += ["--flops-budget", str(budget)]
            start = time.perf_counter()
            result = cli(arguments)
            row["cli_s"] = round(time.perf_counter() - start, 3)
            if result.exit_code == 0:
                row["cli_report_s"] = json.loads(result.stdout)["seconds"]  # without loading the model
            else:
                row["cli_error"] = (result.output.strip().splitlines() or ["?"])[-1]
                del row["cli_s"]
        if time.monotonic() < deadline - margin:
            batched, _ = timed(Upscaler(model, str(device), flops_budget=budget), small, 1)
            single, _ = timed(Upscaler(model, str(device), batch_size=1, flops_budget=budget), small, 1)
            row["compare_input"] = f"{small.shape[1]}x{small.shape[0]}"
            row["compare_batched_s"], row["compare_one_tile_s"] = round(batched, 4), round(single, 4)
            row["batched_speedup"] = round(single / batched, 2)
        rows.append(row)
        log(json.dumps(row))
    return rows


FRAME_8K_LR = (1920, 1080)  # x4: a 7680x4320 output


def frame_rows(
    held_out: np.ndarray, device: torch.device, families: list[str], size: tuple[int, int], repeats: int, log
) -> list[dict]:
    """Engine seconds (no reading or encoding) for an output of 4x `size` (width, height; 1920x1080: an 8K
    frame), ClassSR and `--branch M`, for each of `families` with shipped ClassSR weights. The input is the
    held-out photo resized to `size` with OpenCV's area filter: a real photo's content at that size."""
    import cv2

    from benchmarks.engine_speed import timed
    from classsr_cli.engine import Upscaler
    from classsr_cli.weights import load_weights, shipped_entry

    lr = cv2.resize(held_out, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    rows = []
    for family in families:
        if not shipped_entry(family, "classsr"):
            continue
        model = load_weights(family, kind="classsr").model
        classsr = Upscaler(model, str(device))
        classsr_s, tally = timed(classsr, lr, repeats)
        base_s, _ = timed(Upscaler(model, str(device), branch=model.num_classes), lr, repeats)
        exact_s, _ = timed(Upscaler(model, str(device), exact_shapes=True), lr, repeats)
        row = {
            "family": family,
            "input": f"{size[0]}x{size[1]}",
            "output": f"{4 * size[0]}x{4 * size[1]}",
            "classsr_s": round(classsr_s, 4),
            "base_s": round(base_s, 4),
            "classsr_exact_shapes_s": round(exact_s, 4),
            "flops_ratio": round(tally.flops_ratio(classsr.plan), 4),
            "class_counts": tally.class_counts,
        }
        rows.append(row)
        log(json.dumps(row))
    return rows


def engine_profile_rows(held_out: np.ndarray, device: torch.device, families: list[str], dry_run: bool, log):
    """benchmarks/engine_profile.py on this device: new shapes, host conversions, aten calls and host time
    of the engine's own work (stand-in networks), on three crops of the held-out photo."""
    import cv2

    from benchmarks.engine_profile import SIZES, profile_family
    from classsr_cli.weights import shipped_entry

    sizes = [(w // 8, h // 8) for w, h in SIZES] if dry_run else SIZES
    crops = []
    for width, height in sizes:
        top, left = (held_out.shape[0] - 4 * height) // 2, (held_out.shape[1] - 4 * width) // 2
        hr = held_out[max(0, top) : max(0, top) + 4 * height, max(0, left) : max(0, left) + 4 * width]
        crops.append(cv2.resize(hr, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
    rows = []
    for family in families:
        if shipped_entry(family, "classsr"):
            result = profile_family(family, crops, str(device))
            rows.append(result)
            for row in result["images"]:
                log(json.dumps({"family": family, **row}))
    return rows


def run_engine_only(args, device: torch.device, profile: Profile, report: dict, out: Path, keep: Path, log):
    """The engine table and the 8K frame rows without training: branches of families without shipped
    weights are untrained, which changes their routing but not the time a given routing takes."""
    deadline = time.monotonic() + args.seconds
    photos, _ = load_photos(Path(args.photos), profile.photos, log)
    held_name, held = max(photos, key=lambda item: (engine_pixels(item[1]), item[0]))
    del photos
    families = [get_family(f).name for f in args.families.split(",") if f.strip()]
    networks = build_networks(families, device, args.seed)
    for network in networks:
        network.model.eval()
    report["engine_only"] = {"photo": held_name, "branches": "shipped where shipped, else untrained"}
    label = report["device"]
    rows = engine_table(networks, held, device, profile, deadline, keep, log)
    report["engine"] = rows
    write_json(out / REPORT, report)
    log("")
    log(f"engine on {label} (seconds, median of 2 after a warm-up):")
    log(format_engine_table(rows))
    size = (64, 36) if args.dry_run else FRAME_8K_LR
    report["frame_8k"] = frame_rows(held, device, families, size, 1 if args.dry_run else 2, log)
    write_json(out / REPORT, report)
    report["engine_profile"] = engine_profile_rows(held, device, families, args.dry_run, log)
    write_json(out / REPORT, report)
    copy_atomically(keep / LOG, out / LOG, tail_bytes=LOG_BYTES)
    return report


def _cli_runner():
    """A function running `classsr ARGS` in this process; None when pyvips (reading, writing) is missing."""
    try:
        import pyvips  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or OSError when libvips itself will not load
        return None
    from typer.testing import CliRunner

    from classsr_cli.cli import app

    return lambda arguments: CliRunner().invoke(app, arguments)


def format_engine_table(rows: list[dict]) -> str:
    def cell(row, key, fmt="{:.3f}"):
        return fmt.format(row[key]) if key in row else "-"

    lines = [
        "| family | FLOPs | ClassSR s | exact shapes s | --branch M s | ClassSR out MP/s | "
        "CLI s (read+encode) | batched / 1 tile s (crop) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        compare = (
            f"{row['compare_batched_s']:.3f} / {row['compare_one_tile_s']:.3f} ({row['compare_input']})"
            if "compare_batched_s" in row
            else "-"
        )
        lines.append(
            f"| {row['family']} | {row['flops_ratio']:.0%} | {cell(row, 'classsr_s')} | "
            f"{cell(row, 'classsr_exact_shapes_s')} | {cell(row, 'base_s')} | "
            f"{cell(row, 'classsr_mp_per_s', '{:.1f}')} | {cell(row, 'cli_s')} | "
            f"{compare} |"
        )
    return "\n".join(lines)


# -- the job ---------------------------------------------------------------------------------------


def start_job(args) -> tuple[torch.device, Path, Path, Log, dict]:
    """What every call starts with: its device (the CPU for a dry run, else CUDA, with cuDNN autotuning for
    the fixed shapes), the output and keep folders emptied of earlier calls' files, the log, and the report's
    header. Raises ClasssrError where no GPU is found and no dry run was asked for."""
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    else:
        raise ClasssrError("no CUDA GPU here: run with --dry-run to try the job on the CPU")
    out, keep = Path(args.out), Path(args.keep)
    for folder in (out, keep):
        folder.mkdir(parents=True, exist_ok=True)
        remove_own_files(folder)
    report = {
        "format": FORMAT,
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dry_run": args.dry_run,
        "seconds_asked": args.seconds,
    }
    return device, out, keep, Log(keep / LOG), report


def run_job(args) -> dict:
    start = time.monotonic()
    deadline = start + args.seconds
    profile = DRY if args.dry_run else GPU
    device, out, keep, log, report = start_job(args)
    label = report["device"]
    families = [get_family(f).name for f in args.families.split(",") if f.strip()]
    report["collect"] = (
        "python -m benchmarks.gpu_run --collect K --out DIR (K = 2, 3, ...), on the same machine"
    )
    log(f"gpu_run on {label}, torch {torch.__version__}, {args.seconds:.0f} s")

    with graceful_stop() as stop:
        if not args.no_checks:
            report["checks"] = run_checks(min(profile.checks_seconds, 0.2 * args.seconds), log)
        if args.engine_only:
            return run_engine_only(args, device, profile, report, out, keep, log)

        phase = time.monotonic()
        photos, failed = load_photos(Path(args.photos), profile.photos, log)
        held_name, held = max(photos, key=lambda item: (engine_pixels(item[1]), item[0]))
        train = [pixels for name, pixels in photos if name != held_name]
        train_count = len(train)
        scales = [factor * args.reduce for factor in PAPER_SCALES]
        data = DevicePhotos(train, device, scales=scales, patch=profile.patch)
        del train, photos
        held_out = fixed_crops(held, device, profile.held_out_crops, profile.held_out_size)
        bicubic = imresize_bicubic_psnr(*held_out)
        synchronize(device)
        report["data"] = {
            "folder": str(args.photos),
            "train_photos": train_count,
            "unreadable": failed,
            "held_out": held_name,
            "scales": scales,
            "scaled_images": len(data),
            "lr_positions": data.positions,
            "device_bytes": data.nbytes,
            "patch": profile.patch,
            "held_out_crops": int(held_out[0].shape[0]),
            "held_out_bicubic_psnr": round(bicubic, 4),
            "seconds": round(time.monotonic() - phase, 1),
        }
        log(
            f"data: {len(data)} scaled images ({data.nbytes / 2**30:.2f} GiB on {device.type}), held out "
            f"{held_name} (bicubic {bicubic:.3f} dB on {held_out[0].shape[0]} crops), "
            f"{report['data']['seconds']} s"
        )

        networks = build_networks(families, device, args.seed)
        autocast = training_autocast("auto", device)
        phase = time.monotonic()
        for network in networks:
            probe(
                network, data, profile.batches or RECIPES[network.family].batches, profile, device, autocast
            )
            network.optimizer = make_optimizer(network.model, network.lr, device)
            network.good_state = {k: v.detach().clone() for k, v in network.model.state_dict().items()}
        probe_seconds = time.monotonic() - phase
        states = {n.name: fp16_state(n.model) for n in networks}
        order = [n.name for family in PRIORITY for n in reversed(networks) if n.family == family]
        parts = plan_parts(states, order, args.part_mib * MIB, OUT_FILES, FILE_BYTES)
        del states

        # kept back for the engine table and the last checkpoint; at most a quarter and a tenth of a short job
        engine_seconds = 0.0 if args.no_engine else min(profile.engine_seconds, 0.25 * args.seconds)
        train_end = deadline - engine_seconds - min(profile.final_seconds, 0.1 * args.seconds)
        training_seconds = max(0.0, train_end - time.monotonic())
        rule = share_seconds(networks, training_seconds)
        report["split"] = {
            "rule": rule,
            "probe_seconds": round(probe_seconds, 1),
            "training_seconds": round(training_seconds, 1),
            "seconds": {n.name: round(n.budget, 1) for n in networks},
        }
        log(f"probe {probe_seconds:.1f} s; {training_seconds:.0f} s of training shared out: {rule}")
        log(f"{'network':<12} {'batch':>5} {'steps/s':>8} {'samples/s':>10} {'seconds':>8}")
        for n in networks:
            per_step = n.probe[n.batch]
            log(
                f"{n.name:<12} {n.batch:>5} {1 / per_step:>8.2f} {n.batch / per_step:>10.1f} {n.budget:>8.1f}"
            )

        checkpoints = Checkpoints(networks, parts, keep, out, log)
        context = {"device": device, "autocast": autocast, "profile": profile, "stop": stop, "log": log}
        last = time.monotonic()
        while not stop.requested:
            pending = [n for n in networks if n.seconds < n.budget or n.steps < profile.min_steps]
            if not pending or (
                time.monotonic() >= train_end and all(n.steps >= profile.min_steps for n in networks)
            ):
                break
            network = min(
                pending, key=lambda n: (n.steps >= profile.min_steps, n.seconds / max(n.budget, 1e-9))
            )
            chunk = min(profile.chunk_seconds, max(0.0, network.budget - network.seconds))
            run_chunk(network, data, chunk, train_end, context)
            if time.monotonic() - last >= args.checkpoint_seconds:
                report["elapsed"] = round(time.monotonic() - start, 1)
                checkpoints.write(report, held_out, label)
                log(
                    f"checkpoint {checkpoints.generation} at {report['elapsed']} s: "
                    + progress_line(networks)
                )
                last = time.monotonic()
        report["stopped_early"] = stop.requested
        report["elapsed"] = round(time.monotonic() - start, 1)
        checkpoints.write(report, held_out, label)
        log("")
        header = ("network", "batch", "steps", "seconds", "samples", "loss", "PSNR dB")
        log("{:<12} {:>5} {:>7} {:>8} {:>10} {:>8} {:>8}".format(*header))
        for n in networks:
            log(
                f"{n.name:<12} {n.batch:>5} {n.steps:>7} {n.seconds:>8.1f} {n.samples:>10} "
                f"{n.loss if n.loss is not None else float('nan'):>8.4f} {n.held_out_psnr:>8.3f}"
            )
        log(f"held-out bicubic: {bicubic:.3f} dB; parts: {json.dumps(report['parts'])}")

        if not args.no_engine and not stop.requested:
            del data
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows = engine_table(networks, held, device, profile, deadline, keep, log)
            report["engine"] = rows
            report["elapsed"] = round(time.monotonic() - start, 1)
            checkpoints.save_report(report)
            log("")
            log(f"engine on {label} (seconds, median of 2 after a warm-up):")
            log(format_engine_table(rows))
    if len(parts) > 1:
        log(f"parts 2..{len(parts)} are in {keep}: python -m benchmarks.gpu_run --collect 2 --out DIR")
    return report


def progress_line(networks: list[Network]) -> str:
    return ", ".join(f"{n.name} {n.steps}" for n in networks)


def imresize_bicubic_psnr(lr_crops: torch.Tensor, hr_crops: np.ndarray) -> float:
    """The held-out crops' PSNR for MATLAB-style bicubic x4: the floor a trained network should beat."""
    from classsr_cli.imaging.bicubic import imresize_tensor

    up = imresize_tensor(lr_crops.float(), scale=4).permute(0, 2, 3, 1).cpu().numpy()
    return float(
        np.mean([psnr(unit_to_uint8(out), hr, border=4) for out, hr in zip(up, hr_crops, strict=True)])
    )


def collect(part: int, out: Path, keep: Path) -> list[str]:
    """Copy part `part` (and the report and log) from the keep folder of an earlier call into `out`."""
    path = keep / REPORT
    if not path.exists():
        raise ClasssrError(f"no {REPORT} in {keep}: run the job first (on this machine, same --keep)")
    report = json.loads(path.read_text())
    parts = {entry["part"]: entry for entry in report.get("parts", [])}
    if part not in parts:
        raise ClasssrError(f"there is no part {part}; the parts are {sorted(parts)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in parts[part]["files"]:
        copy_atomically(keep / name, out / name)
    copy_atomically(path, out / REPORT)
    copy_atomically(keep / LOG, out / LOG, tail_bytes=LOG_BYTES)
    return parts[part]["files"]


# -- a whole call on one family: a slimmable ledger (--resume) --------------------------------------


def checkout_files() -> list[Path]:
    """The checkout's files that travel: tracked, and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return [ROOT / name.decode() for name in listed if name and (ROOT / name.decode()).is_file()]


def ledger_weight_bytes(family: str, width: int) -> int:
    """The bytes of a ledger's fp16 shards for the family's network of `width` (the packing's estimate,
    a few KiB above the files' own sizes)."""
    state = fp16_state(create_base(family, width))
    return sum(packed.nbytes for packed in pack({network_name(family, width): state}, FILE_BYTES, "weights"))


def transfer_plan(carried: Path, ledger: Path | None = None, family: str = "", width: int = 0) -> dict:
    """Bytes that travel to the GPU machine: the checkout's files, the ledger's weights and the folder
    brought along (`carried`, .gpu), in bytes, with the limit (CARRY_LIMIT).

    A ledger's weights count at the size they will have once written (fp16 shards of the family's network
    of `width`), or at their present size if larger, so that the plan holds from the first call on; its
    shards already in the checkout are not counted twice. `carried` is counted per top-level entry."""
    from classsr_cli.train.slimmable import Ledger

    shards = {path.resolve() for path in Ledger(ledger).shards()} if ledger is not None else set()
    checkout = sum(path.stat().st_size for path in checkout_files() if path.resolve() not in shards)
    weights = 0
    if ledger is not None:
        weights = max(ledger_weight_bytes(family, width), sum(path.stat().st_size for path in shards))
    entries: dict[str, int] = {}
    if carried.is_dir():
        for path in sorted(carried.rglob("*")):
            if path.is_file():
                top = path.relative_to(carried).parts[0]
                entries[top] = entries.get(top, 0) + path.stat().st_size
    total = checkout + weights + sum(entries.values())
    return {
        "checkout": checkout,
        "ledger_weights": weights,
        "carried_folder": carried.name,
        "carried": entries,
        "total": total,
        "limit": CARRY_LIMIT,
    }


def format_plan(plan: dict) -> str:
    def mib(n: int) -> str:
        return f"{n / MIB:.1f} MiB"

    parts = [f"checkout {mib(plan['checkout'])}"]
    if plan["ledger_weights"]:
        parts.append(f"ledger weights {mib(plan['ledger_weights'])} (fp16 shards)")
    inside = ", ".join(f"{name} {mib(size)}" for name, size in plan["carried"].items())
    parts.append(
        f"{plan['carried_folder']} {mib(sum(plan['carried'].values()))}" + (f" ({inside})" if inside else "")
    )
    return f"transfer: {' + '.join(parts)} = {mib(plan['total'])} of {mib(plan['limit'])}"


def dry_ledger(ledger, found: tuple[dict, dict] | None, work: Path, profile: Profile):
    """Where a dry run trains: a fresh ledger in `work`, or for an existing ledger (`found`: its `read()`) a
    copy of its weights and curve whose recipe takes the dry run's batch and crops, so that a dry run loads
    the real shards and resumes from them. The ledger itself is never written by a dry run."""
    from classsr_cli.train.slimmable import Ledger, Recipe, Slimmable

    shutil.rmtree(work, ignore_errors=True)
    copy = Ledger(work, FILE_BYTES)
    if found is None:
        return copy
    state, run_state = found
    recipe = Recipe(**run_state["recipe"])
    recipe.batch_size, recipe.val_crop, recipe.val_every = (
        profile.batches[0],
        profile.val_crop,
        profile.val_every,
    )
    recipe.small_patch = min(recipe.small_patch, profile.patch * 3 // 4)
    model = Slimmable(recipe.family, recipe.widths)
    model.load_state_dict(state)
    copy.write(model, {**run_state, "recipe": asdict(recipe)})
    if ledger.curve.exists():
        shutil.copyfile(ledger.curve, copy.curve)
    return copy


def ledger_batches(family: str) -> tuple[int, ...]:
    """The batches a new ledger's probe tries on a GPU: the family's and twice its largest (one network has
    the whole GPU's memory)."""
    batches = RECIPES[family].batches
    return (*batches, 2 * max(batches))


def run_ledger(args) -> dict:
    """The call given to one family's slimmable ledger (--resume): see the module's note."""
    from classsr_cli.models.registry import resolve_widths
    from classsr_cli.train.slimmable import SLIMMABLE_FAMILIES, Ledger, Recipe, Slimmable, train_slimmable

    start = time.monotonic()
    deadline = start + args.seconds
    profile = DRY if args.dry_run else GPU
    families = [get_family(f).name for f in args.families.split(",") if f.strip()]
    if len(families) != 1 or families[0] not in SLIMMABLE_FAMILIES:
        raise ClasssrError(
            f"--resume continues one slimmable family ({', '.join(SLIMMABLE_FAMILIES)}): "
            f"pass --families with one of them, not '{args.families}'"
        )
    family = families[0]
    ledger = Ledger(Path(args.resume), FILE_BYTES)
    found = ledger.read()
    if found is not None:  # the ledger's own widths; its family must be this one
        if ledger.weights.exists():
            raise ClasssrError(
                f"{ledger.folder} keeps fp32 weights in one file: continue it with `classsr train slimmable`"
            )
        if ledger.stored_tags().get("dry_run") and not args.dry_run:
            raise ClasssrError(
                f"{ledger.folder} holds a dry run's ledger: remove its files before a real call"
            )
        kept = found[1]["recipe"]
        if kept["family"] != family:
            raise ClasssrError(f"{ledger.folder} holds a {kept['family']} run, not {family}")
        widths = sorted(int(w) for w in kept["widths"])
    else:
        asked = args.widths and [int(w) for w in args.widths.split(",")]
        widths = sorted(resolve_widths(family, widths=asked))
    device, out, keep, log, report = start_job(args)
    label = report["device"]
    log(f"gpu_run on {label}, torch {torch.__version__}, {args.seconds:.0f} s: {family} ledger {args.resume}")
    if args.dry_run:
        plan = transfer_plan(Path(args.carried), Path(args.resume), family, widths[-1])
        report["transfer"] = plan
        log(format_plan(plan))
        if plan["total"] > CARRY_LIMIT:
            write_json(out / REPORT, report)
            raise ClasssrError(
                f"{plan['total'] / MIB:.1f} MiB would travel, more than {CARRY_LIMIT / MIB:.0f} MiB: "
                "`make gpu-run GPU_FAMILIES=... GPU_RESUME=...` shrinks the photos to what is left"
            )

    tags = {"device": label, "torch": torch.__version__, "dry_run": bool(args.dry_run)}
    if args.dry_run:
        ledger = dry_ledger(ledger, found, keep / "dry-ledger", profile)
        found = ledger.read()
        what = f"a copy of {args.resume}" if found else "a new ledger"
        log(f"dry run: training in {ledger.folder}, {what}")
    started_at = int(found[1]["iteration"]) if found else 0
    ledger.tags = {**tags, "started_at": started_at}

    phase = time.monotonic()
    photos, failed = load_photos(Path(args.photos), profile.photos, log)
    scales = [factor * args.reduce for factor in PAPER_SCALES]
    data = DevicePhotos([pixels for _, pixels in photos], device, scales=scales, patch=profile.patch)
    val_photos = list_photos(Path(args.val))[: profile.val_photos] if Path(args.val).is_dir() else []
    if not val_photos:
        raise DataError(f"no validation photos in {args.val}: `make gpu-run` puts their central crops there")
    synchronize(device)
    report["data"] = {
        "folder": str(args.photos),
        "train_photos": len(photos),
        "unreadable": failed,
        "scales": scales,
        "scaled_images": len(data),
        "lr_positions": data.positions,
        "device_bytes": data.nbytes,
        "patch": profile.patch,
        "val": [path.name for path in val_photos],
        "seconds": round(time.monotonic() - phase, 1),
    }
    del photos
    log(
        f"data: {len(data)} scaled images of {report['data']['train_photos']} photos "
        f"({data.nbytes / 2**30:.2f} GiB on {device.type}), {len(val_photos)} validation crops, "
        f"{report['data']['seconds']} s"
    )

    autocast = training_autocast(args.precision or "auto", device)
    precision = "fp32" if isinstance(autocast, contextlib.nullcontext) else "bf16"
    if found is None:  # a new ledger: the probe picks its batch, kept in the recipe from then on
        model = Slimmable(family, widths).to(device)
        model.net.to(memory_format=torch.channels_last)
        network = Network(family, widths[-1], model, RECIPES[family].lr, None, 0)
        phase = time.monotonic()
        batches = profile.batches or ledger_batches(family)
        probe(network, data, batches, profile, device, autocast)
        log(
            f"probe {time.monotonic() - phase:.1f} s, seconds per step of width {widths[-1]}: "
            + ", ".join(
                f"batch {b} {s:.3f}" if s else f"batch {b} out of memory" for b, s in network.probe.items()
            )
            + f"; batch {network.batch}"
        )
        report["probe"] = {str(b): s for b, s in network.probe.items()}
        batch = network.batch
        del model, network
        if device.type == "cuda":
            torch.cuda.empty_cache()
    else:
        batch = int(found[1]["recipe"]["batch_size"])
    recipe = Recipe(
        family=family,
        widths=widths,
        iters=args.iters,
        lr=RECIPES[family].lr,
        batch_size=batch,
        small_patch=profile.patch * 3 // 4,
        val_every=profile.val_every,
        val_crop=profile.val_crop,
    )
    reference = None
    if not any(r.get("type") == "reference" for r in ledger.records()):
        try:  # the weights folder needs platformdirs, which travels as a wheel
            from classsr_cli.weights import load_weights

            reference = load_weights("carn", kind="base").model
        except (ImportError, ClasssrError) as error:
            log(f"no reference network on the curve ({error}): bicubic alone")

    def export(first_line: int) -> None:
        files = ledger.export(out, first_line)
        report["files"] = [path.name for path in files]

    note = {"device": label, "torch": torch.__version__, "batch": batch, "precision": precision}
    state = train_slimmable(
        recipe,
        ledger,
        data,
        val_photos,
        reference=reference,
        reference_name="carn-o",
        device=str(device),
        save_minutes=args.checkpoint_seconds / 60,
        log_every=profile.log_every,
        echo=log,
        autocast=autocast,
        fused=True,
        deadline=deadline - min(profile.final_seconds, 0.1 * args.seconds),
        min_steps=profile.min_steps,
        validate_at_end=True,
        on_save=export,
        read_photo=read_photo,
        note=note,
    )
    steps = state["iteration"] - state["started_at"]
    report["ledger"] = {
        "folder": str(args.resume),
        "trained_in": str(ledger.folder),
        "family": family,
        "widths": widths,
        "batch": state["recipe"]["batch_size"],
        "started_at": state["started_at"],
        "iteration": state["iteration"],
        "steps": steps,
        "seconds_total": state["seconds"],
        "validation": state["validation"],
        "recipe": state["recipe"],
    }
    report["elapsed"] = round(time.monotonic() - start, 1)
    log(
        f"{family} ledger: steps {state['started_at']} -> {state['iteration']} ({steps} in this call, batch "
        f"{state['recipe']['batch_size']}), {state['seconds']:.0f} s of training in all; last validation "
        f"{json.dumps(state['validation'])}"
    )
    log(f"returned: {', '.join(report.get('files', []))} in {out}")
    if args.dry_run:
        log(
            "a dry run's files: add them only to a ledger of their own "
            "(--add-back DIR --resume OTHER --dry-run)"
        )
    else:
        log(f"add them here: python -m benchmarks.gpu_run --add-back DIR --resume {args.resume}")
    write_json(out / REPORT, report)
    copy_atomically(keep / LOG, out / LOG, tail_bytes=LOG_BYTES)
    return report


def add_back(returned: Path, ledger_dir: Path, dry_run: bool = False) -> dict:
    """Add a ledger call's returned files (`returned`: its --out) to the ledger `ledger_dir`. A dry run's
    files are refused unless `dry_run` (they would mix a CPU's few steps into the GPU's curve)."""
    from classsr_cli.train.slimmable import Ledger

    back = Ledger(returned)
    if back.shards() and back.stored_tags().get("dry_run") and not dry_run:
        raise OutputError(
            f"{returned} holds a dry run's ledger: add it with --dry-run, to a ledger of its own"
        )
    result = Ledger(ledger_dir).add(returned)
    if result["added"]:
        print(
            f"{ledger_dir}: step {result['from']} -> {result['to']}, {result['lines']} curve lines added; "
            f"commit it: git add {ledger_dir}"
        )
    else:
        print(f"{ledger_dir} is already at step {result['to']}: nothing to add")
    return result


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        help="Output folder: part 1 of the weights, gpu_run.json, gpu_run.log (an earlier run's replaced).",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="Wall time of the whole job (540; dry 100)."
    )
    parser.add_argument("--dry-run", action="store_true", help="The same job on the CPU, tiny.")
    parser.add_argument("--photos", default=str(ROOT / ".gpu" / "photos"), help="Folder of training photos.")
    parser.add_argument(
        "--keep",
        default=str(Path(tempfile.gettempdir()) / "classsr-gpu-run"),
        help="Folder on this machine's disk for every part (for --collect).",
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--reduce", type=float, default=1.0, help="Shrink every photo by this first.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-seconds", type=float, default=60.0)
    parser.add_argument("--part-mib", type=float, default=PART_BYTES / MIB, help=argparse.SUPPRESS)
    parser.add_argument("--no-checks", action="store_true", help="Skip the CUDA tests.")
    parser.add_argument("--no-engine", action="store_true", help="Skip the engine table.")
    parser.add_argument(
        "--engine-only", action="store_true", help="No training: the engine table and the 8K frame rows."
    )
    parser.add_argument("--collect", type=int, metavar="K", help="Copy part K of an earlier call to --out.")
    parser.add_argument(
        "--resume", metavar="LEDGER", help="Spend the call on one family's slimmable ledger folder."
    )
    parser.add_argument("--widths", help="With --resume, a new ledger's widths (default: the paper's).")
    parser.add_argument(
        "--iters", type=int, default=100_000, help="With --resume: the planned steps (the cosine's length)."
    )
    parser.add_argument(
        "--val", default=str(ROOT / ".gpu" / "val"), help="With --resume: validation photos or their crops."
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), help="With --resume: auto is bf16 on a GPU."
    )
    parser.add_argument(
        "--carried",
        default=str(CARRIED),
        help="With --resume --dry-run: the folder that travels beside the checkout, counted in the plan.",
    )
    parser.add_argument(
        "--add-back",
        metavar="DIR",
        help="Add a --resume call's returned folder to the ledger --resume (a dry run's: with --dry-run).",
    )
    parser.add_argument("--export", nargs="+", metavar="DIR", help="Folders of parts to convert.")
    parser.add_argument("--to", help="With --export: folder for the project's weights files.")
    args = parser.parse_args(argv)
    try:
        if args.export:
            if not args.to:
                parser.error("--export needs --to FOLDER")
            for path in export_networks([Path(p) for p in args.export], Path(args.to)):
                print(path)
            return None
        if args.add_back:
            if not args.resume:
                parser.error("--add-back needs --resume LEDGER")
            add_back(Path(args.add_back), Path(args.resume), args.dry_run)
            return None
        if not args.out:
            parser.error("--out is required")
        if args.collect is not None:
            for name in collect(args.collect, Path(args.out), Path(args.keep)):
                print(Path(args.out) / name)
            return None
        if not 0 < args.reduce <= 1:
            parser.error("--reduce must be in (0, 1]")
        args.seconds = args.seconds or (100.0 if args.dry_run else 540.0)
        return run_ledger(args) if args.resume else run_job(args)
    except ClasssrError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
