"""Every way a run can be stopped mid-write leaves no partial file: real processes, real signals.

Each case runs `python -m classsr_cli upscale` (through a wrapper that pauses the engine once the writer holds
the first rows, sleeping or computing), sends a signal, and checks the exit status and that the output folder
is empty. The cases run side by side, so that the suite pays for about one process start-up, not five.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from classsr_cli.imaging import write_image
from classsr_cli.imaging import writer as writer_module
from classsr_cli.models import create
from classsr_cli.weights import save_model

# Pauses the engine after its first strip, when the writer's file under construction exists and holds rows,
# then runs the CLI as `python -m classsr_cli` does. Signal dispositions are reset to the defaults: a test
# runner started in the background (or under nohup) passes SIGINT or SIGHUP on ignored.
WRAPPER = r"""
import runpy, signal, sys, time
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)
for name in ("SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_DFL)

from classsr_cli.engine.upscaler import Upscaler
from classsr_cli.imaging import writer

writer.UNNAMED_TEMP_FILES = sys.argv.pop(1) == "unnamed"
ready = Path(sys.argv.pop(1))
computing = sys.argv.pop(1) == "computing"
stream = Upscaler.stream

def paused(self, *args, **kwargs):
    for index, strip in enumerate(stream(self, *args, **kwargs)):
        yield strip
        if index == 0:
            ready.write_text("writing")
            if computing:  # the engine inside the library's C++ code, as in a large network
                import torch
                torch.set_num_threads(1)
                square = torch.ones(1200, 1200)
                for _ in range(1000):
                    square @ square
            time.sleep(120)

Upscaler.stream = paused
sys.argv[0] = "classsr"
runpy.run_module("classsr_cli", run_name="__main__")
"""

# (signal name, temporary files, how it is sent, expected exit status, what the engine's thread does then)
CASES = [
    ("SIGINT", "named", "process", 130, "sleeping"),  # Ctrl-C
    ("SIGTERM", "named", "process", 128 + 15, "sleeping"),
    ("SIGHUP", "named", "process", 128 + 1, "sleeping"),  # the terminal was closed
    ("SIGKILL", "unnamed", "group", -9, "sleeping"),  # nothing runs in-process: the unnamed file must vanish
    # Ctrl-C while the engine's thread runs a network: the process exits without waiting for it, and
    # without aborting ("terminate called without an active exception", exit status 134)
    ("SIGINT", "named", "process", 130, "computing"),
]
IDS = [f"{name}-{temp}" + ("-computing" if doing == "computing" else "") for name, temp, _, _, doing in CASES]
UNNAMED_AVAILABLE = writer_module.UNNAMED_TEMP_FILES


def tiny_model_and_image(folder: Path) -> tuple[Path, Path]:
    """A tiny ClassSR-FSRCNN weights file and a 40x100 RGB input in `folder`."""
    torch.manual_seed(0)
    weights = save_model(create("fsrcnn", widths=[4, 8, 12]), folder / "tiny.safetensors", "fsrcnn")
    image = folder / "in.png"
    write_image(image, np.random.default_rng(0).random((100, 40, 3)).astype(np.float32))
    return weights, image


def package_env() -> dict:
    """The environment of a child process: the package under test importable, also where it is not
    installed (a checkout's tests)."""
    paths = [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
    """Start every case at once, signal each once it is writing; {case id: (folder, exit status, stderr)}."""
    root = tmp_path_factory.mktemp("interrupts")
    weights, image = tiny_model_and_image(root)
    env = package_env()
    running = {}
    for (_, temp, _, _, doing), case in zip(CASES, IDS, strict=True):
        if temp == "unnamed" and not UNNAMED_AVAILABLE:
            continue
        folder = root / case
        folder.mkdir()
        ready = root / f"{case}.ready"
        command = [sys.executable, "-c", WRAPPER, temp, str(ready), doing, "upscale", str(image)]
        command += [str(folder / "out.png"), "--weights", str(weights), "--batch-size", "1"]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        running[case] = (process, ready, folder)
    results = {}
    deadline = time.monotonic() + 120
    for (name, _, target, _, _), case in zip(CASES, IDS, strict=True):
        if case not in running:
            continue
        process, ready, folder = running[case]
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None and ready.exists():
            time.sleep(0.5)  # the computing case: well inside its loop
            signum = getattr(signal, name)
            if target == "group":
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        else:
            process.kill()
        _, stderr = process.communicate(timeout=60)
        results[case] = (folder, process.returncode, stderr.decode(errors="replace"), ready.exists())
    return results


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_stopped_run_leaves_no_partial_file(stopped_runs, case):
    name, temp, _, expected_status, _ = case
    if temp == "unnamed" and not UNNAMED_AVAILABLE:
        pytest.skip("unnamed temporary files (O_TMPFILE) exist on Linux only")
    folder, status, stderr, was_writing = stopped_runs[IDS[CASES.index(case)]]
    assert was_writing, f"the run never reached the writer: {stderr}"
    assert status == expected_status, stderr
    assert sorted(p.name for p in folder.iterdir()) == []
    if name != "SIGKILL":
        assert stderr.strip().splitlines()[-1].startswith("error: "), stderr
        assert "Traceback" not in stderr


# A Python program that catches Ctrl-C around `upscale_file` and then ends normally: the interrupt lands
# while the engine is inside a network, with the reader's and the writer's threads alive.
LIBRARY_USER = r"""
import os, signal, sys, threading, time
from pathlib import Path

import torch

from classsr_cli.engine.pipeline import upscale_file
from classsr_cli.engine.upscaler import Upscaler
from classsr_cli.weights import load_model

stream = Upscaler.stream
writing = threading.Event()

def computing(self, *args, **kwargs):
    for index, strip in enumerate(stream(self, *args, **kwargs)):
        yield strip
        if index == 0:
            writing.set()
            square = torch.ones(600, 600)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                square @ square

Upscaler.stream = computing
source, target, weights = sys.argv[1:]
engine = Upscaler(load_model(weights), "cpu", batch_size=1)
threading.Thread(target=lambda: writing.wait() and os.kill(os.getpid(), signal.SIGINT), daemon=True).start()
try:
    upscale_file(engine, Path(source), Path(target))
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def test_a_program_that_catches_ctrl_c_around_the_library_exits_without_aborting(tmp_path):
    weights, image = tiny_model_and_image(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-c", LIBRARY_USER, str(image), str(out / "x4.png"), str(weights)]
    done = subprocess.run(command, env=package_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped" and "terminate called" not in done.stderr
    assert list(out.iterdir()) == []


def test_stopping_prepare_data_stops_its_worker_processes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for index in range(6):
        write_image(photos / f"p{index}.png", rng.random((900, 1200, 3)).astype(np.float32))
    out = tmp_path / "prepared"
    command = [sys.executable, "-c", "from classsr_cli.cli import main; main()", "prepare-data", str(photos)]
    command += [str(out), "--rank-model", "fsrcnn", "--workers", "2"]
    process = subprocess.Popen(
        command, env=package_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not (out / "parts").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(4)  # the workers are started and inside their first photos (a photo takes longer)
    assert process.poll() is None, process.communicate()[1].decode(errors="replace")
    process.send_signal(signal.SIGINT)  # to the main process only, as `kill -INT` sends it
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode(errors="replace")
    time.sleep(1)
    members = _group_members(process.pid)
    left = [line for line in members if not line.split()[2].startswith("Z")]  # zombies are being reaped
    if left:
        os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"processes outlived the stopped run: {left}"
    assert not list((out / "parts").glob("*.npz"))  # no photo was done; nothing half-done is kept either


def _group_members(pgid: int) -> list[str]:
    """`ps` lines (pid, state, command) of the processes in process group `pgid`."""
    listing = subprocess.run(["ps", "-eo", "pgid=,pid=,stat=,args="], capture_output=True, text=True).stdout
    return [line.strip() for line in listing.splitlines() if line.split() and line.split()[0] == str(pgid)]
