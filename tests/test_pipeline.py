"""The file pipeline's threads and memory: the engine computes on the calling thread, the writer consumes
beside it, and whichever side stops, the other ends and the first error is the one raised; freed memory is
reused, and given back to the system only where that lowers the peak."""

import subprocess
import sys
import threading

import numpy as np
import pytest

import classsr_cli
from classsr_cli.engine import pipeline
from classsr_cli.engine import upscaler as upscaler_module
from classsr_cli.engine.pipeline import Abandoned, consume_in_background, upscale_file
from classsr_cli.engine.upscaler import Upscaler
from classsr_cli.imaging import read_image, write_image


def test_the_consumer_gets_every_item_in_order_and_its_result_is_returned():
    seen_on = []

    def consume(items):
        seen_on.append(threading.current_thread())
        return list(items)

    assert consume_in_background(consume, iter(range(50)), depth=1) == list(range(50))
    assert seen_on[0] is not threading.current_thread()


def test_a_consumer_error_is_raised_in_the_producing_thread_and_the_producer_is_closed():
    closed = []

    def produce():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    def consume(items):
        for index in items:
            if index == 3:
                raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        consume_in_background(consume, produce())
    assert closed == [True]


def test_a_producer_error_abandons_the_consumer_first_and_is_then_raised():
    events = []

    def produce():
        yield 1
        yield 2
        raise KeyboardInterrupt

    def consume(items):
        try:
            for _ in items:
                pass
        except Abandoned:
            events.append("abandoned")
            raise

    with pytest.raises(KeyboardInterrupt):
        consume_in_background(consume, produce())
    assert events == ["abandoned"]  # the consumer had ended (its files removed) before the raise


def test_the_engine_computes_on_the_calling_thread(tmp_path, monkeypatch):
    # PyTorch's CPU operators use an OpenMP pool per calling thread: a second computing thread doubles the
    # pools and slowed ClassSR-CARN 1.3-1.6x on a 2-core CPU, so the engine must run where the model was made
    stream = Upscaler.stream
    threads = set()

    def recording(self, *args, **kwargs):
        for strip in stream(self, *args, **kwargs):
            threads.add(threading.current_thread())
            yield strip

    monkeypatch.setattr(Upscaler, "stream", recording)
    rng = np.random.default_rng(0)
    write_image(tmp_path / "in.png", rng.random((40, 70, 3), dtype=np.float32))
    engine = Upscaler(classsr_cli.load("fsrcnn", device="cpu").network, "cpu")
    report = upscale_file(engine, tmp_path / "in.png", tmp_path / "out.png")
    assert threads == {threading.current_thread()}
    assert read_image(tmp_path / "out.png").shape == (160, 280, 3)
    assert 0 < report.engine_seconds <= report.seconds


def test_a_write_error_ends_the_run_with_the_writers_error_and_no_file(tmp_path, monkeypatch):
    def failing(self, strips):
        for index, _ in enumerate(strips):
            if index == 1:
                raise pipeline.OutputError("cannot write: disk full")

    rng = np.random.default_rng(1)
    write_image(tmp_path / "in.png", rng.random((120, 64, 3), dtype=np.float32))
    monkeypatch.setattr(pipeline.ImageWriter, "write", failing)
    engine = Upscaler(classsr_cli.load("fsrcnn", device="cpu").network, "cpu", piece_rows=1)
    with pytest.raises(pipeline.OutputError, match="disk full"):
        upscale_file(engine, tmp_path / "in.png", tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_freed_memory_goes_back_to_the_system_only_where_the_encoder_waits_for_the_last_strip(
    tmp_path, monkeypatch
):
    from classsr_cli.imaging import writer as writer_module

    assert not pipeline.ImageWriter(tmp_path / "a.png", 1920, 1080).encodes_after_writing
    assert pipeline.ImageWriter(tmp_path / "b.png", 40000, 480).encodes_after_writing
    assert not pipeline.ImageWriter(tmp_path / "c.tif", 40000, 480).encodes_after_writing
    calls = []
    monkeypatch.setattr(pipeline, "release_freed_memory", lambda: calls.append(True))
    rng = np.random.default_rng(2)
    write_image(tmp_path / "in.png", rng.random((30, 50, 3), dtype=np.float32))
    engine = Upscaler(classsr_cli.load("fsrcnn", device="cpu").network, "cpu")
    upscale_file(engine, tmp_path / "in.png", tmp_path / "out.png")
    assert calls == []  # the encoder was running: trimming (7-13 ms on a 1920x1080 output) buys nothing
    monkeypatch.setattr(writer_module, "ENCODER_BUDGET", 1000)  # as for a panorama: the encoder waits
    upscale_file(engine, tmp_path / "in.png", tmp_path / "out2.png")
    assert calls == [True]
    assert np.array_equal(read_image(tmp_path / "out.png"), read_image(tmp_path / "out2.png"))


# In a fresh process: run inside the whole suite's process the same check found 24,576 faults (not
# explained; the engine's own runs, fresh processes, had none)
REUSE = r"""
import resource, torch
from classsr_cli.engine.runner import reuse_freed_memory

def faults_filling(megabytes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(megabytes << 18).fill_(1.0)  # float32: MB << 18 values
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_filling(96)
without = faults_filling(96)
assert reuse_freed_memory()
print(without, *[faults_filling(96) for _ in range(8)])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc thresholds")
def test_freed_blocks_are_reused_instead_of_faulted_in_again(monkeypatch):
    command = [sys.executable, "-c", REUSE]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    before, *after = (int(v) for v in done.stdout.split())
    # a 96 MB block allocated again: about 24,000 page faults each time before; after, one or two of the
    # first allocations may still grow the heap, then the block is found there again
    assert before > 20000 and max(after[-3:]) < 2000, after
    calls = []
    monkeypatch.setattr(upscaler_module, "reuse_freed_memory", lambda: calls.append(True))
    network = classsr_cli.load("fsrcnn", device="cpu").network
    calls.clear()
    Upscaler(network, "cpu")
    assert calls == [True]  # every CPU engine asks for it
