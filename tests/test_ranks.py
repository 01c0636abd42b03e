"""A folder shared between the processes of a torchrun launch: two CPU processes (gloo), tiny images."""

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed
from typer.testing import CliRunner

from classsr_cli.cli import app
from classsr_cli.engine.ranks import Ranks, balanced_shares, image_pixels
from classsr_cli.imaging import write_image

REPO = Path(__file__).resolve().parent.parent
SIZES = [(30, 40), (44, 40), (30, 56), (36, 24)]  # (height, width): different sizes, so that balance matters
needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this PyTorch has no torch.distributed with gloo",
)


def _loads(weights: list[float], shares: list[list[int]]) -> list[float]:
    return [sum(weights[i] for i in share) for share in shares]


def test_balanced_shares_give_each_item_once_and_keep_big_items_apart():
    weights = [100, 1, 100, 1, 0, 0]
    shares = balanced_shares(weights, 2)
    assert sorted(itertools.chain(*shares)) == list(range(6))
    assert all(share == sorted(share) for share in shares)
    assert _loads(weights, shares) == [101, 101]  # i % 2 would give 200 and 2
    assert [len(share) for share in shares] == [3, 3]  # unknown sizes (0) are dealt out, not piled up
    assert balanced_shares([0, 0, 0, 0, 0], 3) == [[0, 3], [1, 4], [2]]
    assert balanced_shares(weights, 2) == shares  # the same on every rank
    assert balanced_shares([5], 3) == [[0], [], []]


def test_balanced_shares_stay_within_four_thirds_of_the_best_split():
    rng = np.random.default_rng(0)
    for _ in range(30):
        weights = rng.integers(1, 1000, size=int(rng.integers(1, 8))).tolist()
        best = min(
            max(sum(w for w, p in zip(weights, parts, strict=True) if p == part) for part in range(3))
            for parts in itertools.product(range(3), repeat=len(weights))
        )
        assert max(_loads(weights, balanced_shares(weights, 3))) <= best * 4 / 3


def test_one_process_does_every_image_itself(tmp_path):
    ranks = Ranks()
    assert not ranks.distributed and ranks.is_main
    assert ranks.share_images(["a.png", "b.png"]) == [0, 1]  # no header is read: the files need not exist
    assert ranks.device_spec("auto") == "auto"
    assert ranks.from_main(lambda: 7) == 7 and ranks.agree(lambda: 8) == 8
    assert ranks.gather({1: "b", 0: "a"}) == {0: "a", 1: "b"}
    (tmp_path / "broken.png").write_bytes(b"not an image")
    write_image(tmp_path / "a.png", np.zeros((3, 5, 3), np.float32))
    assert image_pixels([tmp_path / "a.png", tmp_path / "broken.png", tmp_path / "missing.png"]) == [15, 0, 0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    images = root / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(SIZES):
        write_image(images / f"img{index}.png", rng.random((height, width, 3)).astype(np.float32))
    reference = root / "reference"
    result = CliRunner().invoke(
        app, ["upscale", str(images), str(reference), "--model", "fsrcnn", "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    return images, reference


def torchrun(*args: object) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m classsr_cli ARGS` with this checkout's package."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",  # two processes on a test machine's cores
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "classsr_cli", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("error: ")]


@needs_gloo
def test_two_processes_share_a_folder_with_the_outputs_of_one(folder, tmp_path):
    images, reference = folder
    out = tmp_path / "out"
    run = torchrun("upscale", images, out, "--model", "fsrcnn", "--device", "cpu", "--json")
    assert run.returncode == 0, run.stderr
    documents = json.loads(run.stdout)  # one JSON document is all there is on stdout
    names = [f"img{index}.png" for index in range(len(SIZES))]
    assert [Path(d["input"]).name for d in documents] == names
    # each image was done by the rank the size-balanced split gives it, so by one rank only
    expected = balanced_shares([height * width for height, width in SIZES], 2)
    assert [d["rank"] for d in documents] == [0 if i in expected[0] else 1 for i in range(len(SIZES))]
    assert {d["rank"] for d in documents} == {0, 1}
    assert sorted(p.name for p in out.iterdir()) == names  # nothing else, no temporary file left
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@needs_gloo
def test_a_broken_image_fails_the_launch_and_is_reported_once(folder, tmp_path):
    images, reference = folder
    mixed = tmp_path / "in"
    mixed.mkdir()
    for image in images.iterdir():
        (mixed / image.name).write_bytes(image.read_bytes())
    (mixed / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    run = torchrun("upscale", mixed, out, "--model", "fsrcnn", "--device", "cpu", "--json")
    assert run.returncode != 0
    documents = json.loads(run.stdout)
    failures = [d for d in documents if "error" in d]
    assert [Path(d["input"]).name for d in failures] == ["broken.png"]
    assert len(documents) == len(SIZES) + 1
    (line,) = error_lines(run)  # printed once, by the rank that met it
    assert line.startswith(f"error: {mixed / 'broken.png'}: not a supported image")
    for index in range(len(SIZES)):
        name = f"img{index}.png"
        assert (out / name).read_bytes() == (reference / name).read_bytes()


@needs_gloo
def test_a_plan_refused_before_any_work_is_reported_once_by_rank_0(folder, tmp_path):
    images, _ = folder
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should go")
    run = torchrun("upscale", images, taken, "--model", "fsrcnn", "--device", "cpu", "--json")
    assert run.returncode != 0
    assert json.loads(run.stdout) == {
        "error": f"{taken} is a file, but the input is a folder: give an output folder"
    }
    assert len(error_lines(run)) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# one rank of a hand-made launch of two: sys.argv[1] is where it writes what it saw
AGREEING_RANK = """
import json, sys
from pathlib import Path
import torch.distributed
from classsr_cli.engine.ranks import joined
from classsr_cli.errors import ClasssrError, ModelError

seen = {}
try:
    with joined() as ranks:
        seen["shares"] = ranks.share([5, 1, 4])
        seen["gathered"] = ranks.gather({index: ranks.rank for index in seen["shares"]})
        seen["planned"] = ranks.from_main(lambda: f"made by rank {ranks.rank}")

        def only_rank_1_fails():
            if ranks.rank == 1:
                raise ModelError("no GPU for this rank")
            return "fine"

        ranks.agree(only_rank_1_fails)
except ClasssrError as error:
    seen["error"] = [type(error).__name__, str(error), ranks.failed_together]
seen["left"] = not torch.distributed.is_initialized()
Path(sys.argv[1]).write_text(json.dumps(seen))
"""


@needs_gloo
def test_a_step_that_fails_on_one_rank_fails_on_all_and_rank_0_names_it(tmp_path):
    port = _free_port()
    processes = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        env.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-c", AGREEING_RANK, str(tmp_path / f"rank{rank}.json")]
        processes.append(subprocess.Popen(command, env=env))
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    main, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert main["shares"] == [0] and other["shares"] == [1, 2]  # 5 against 1 + 4
    assert main["gathered"] == other["gathered"] == {"0": 0, "1": 1, "2": 1}
    assert main["planned"] == other["planned"] == "made by rank 0"
    assert main["error"] == ["ClasssrError", "rank 1: no GPU for this rank", True]
    assert other["error"] == ["ReportedElsewhere", "no GPU for this rank", True]  # the CLI prints nothing
    assert main["left"] and other["left"]
