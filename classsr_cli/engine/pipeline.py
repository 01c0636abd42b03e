"""Files in, files out: read in strips, upscale through the engine, write in strips, report.

Reading, the engine and writing overlap: the reader decodes the next strips in a thread of its own, the
engine runs in the calling thread, and the writer encodes what it has already been given in a thread of its
own (pyvips, the encoders and torch all release Python's lock while they work). The engine stays on the
calling thread because PyTorch's CPU operators run on an OpenMP thread pool per calling thread: a second
thread computing beside the pool the caller made when it loaded the model puts more pool threads than
cores in the process, and libgomp then stops spinning between operators; ClassSR-CARN ran 1.5 to 1.6
times slower that way on a 2-core CPU (docs/engine.md).
"""

import atexit
import ctypes
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classsr_cli.engine.tiling import padded_size, tile_starts
from classsr_cli.engine.upscaler import Layout, Upscaler
from classsr_cli.errors import OVERWRITE_HINT, OutputError
from classsr_cli.imaging import DEFAULT_MAX_PIXELS, ImageWriter, open_image, output_format

# How many LR rows are read at a time: small enough to keep memory flat, large enough to amortise decoding;
# fewer for very wide images, so that a strip (float32) stays within READ_BYTES.
READ_ROWS = 128
READ_BYTES = 8 * 2**20


@dataclass
class ImageReport:
    input: str
    output: str
    width: int
    height: int
    out_width: int
    out_height: int
    tiles: int
    class_counts: list[int]
    flops_ratio: float  # paper convention: FLOPs per 32x32 sub-image against the base network's
    seconds: float
    device: str
    engine_seconds: float = 0.0  # of `seconds`: the engine's own work, reading and writing not included
    executed_ratio: float = 0.0  # FLOPs that ran against the base network run once over the image
    tiling: str = "region"
    class_map: str | None = None
    pages: int = 1  # pages or frames in the input; only the first was upscaled
    page_word: str = "page"
    rank: int | None = None  # the process that did it, in a run shared by torchrun
    metadata_dropped: list[str] = field(default_factory=list)  # what the output could not keep, in words
    converted: list[str] = field(default_factory=list)  # pixels the output format changed, in words

    @property
    def partial_input(self) -> str | None:
        """A note when the input held more than the first page or frame, which alone was upscaled."""
        if self.pages <= 1:
            return None
        return f"{self.input} holds {self.pages} {self.page_word}s: only the first was upscaled"

    @property
    def notes(self) -> list[str]:
        """What the user should hear about this image besides the figures: one line each."""
        notes = [self.partial_input] if self.partial_input else []
        if self.metadata_dropped:
            notes.append(f"{self.output}: metadata not kept: {'; '.join(self.metadata_dropped)}")
        if self.converted:
            notes.append(f"{self.output}: {'; '.join(self.converted)}")
        return notes

    def as_json(self) -> dict:
        document = {
            "input": self.input,
            "output": self.output,
            "width": self.width,
            "height": self.height,
            "out_width": self.out_width,
            "out_height": self.out_height,
            "tiles": self.tiles,
            "class_counts": self.class_counts,
            "flops_ratio": round(self.flops_ratio, 6),
            "executed_ratio": round(self.executed_ratio, 6),
            "tiling": self.tiling,
            "seconds": round(self.seconds, 3),
            "engine_seconds": round(self.engine_seconds, 3),
            "device": self.device,
        }
        if self.class_map:
            document["class_map"] = self.class_map
        if self.pages > 1:
            document["pages"] = self.pages
            document["note"] = self.partial_input
        if self.metadata_dropped:
            document["metadata_dropped"] = self.metadata_dropped
        if self.converted:
            document["converted"] = self.converted
        if self.rank is not None:
            document["rank"] = self.rank
        return document


@dataclass
class ClassGrid:
    """The class of every tile of one image, filled band by band, for the class map."""

    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    classes: list[np.ndarray] = field(default_factory=list)

    def add(self, count: int, classes: np.ndarray, band_rows: list[int], cols: list[int]) -> None:
        self.rows.extend(band_rows)
        self.cols = cols
        self.classes.append(np.asarray(classes).reshape(len(band_rows), len(cols)))

    def as_array(self) -> np.ndarray:
        return np.concatenate(self.classes, axis=0)


def upscale_file(
    engine: Upscaler,
    source: Path,
    target: Path,
    *,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    class_map: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImageReport:
    """Upscale (x4) or denoise one image file into `target`, at the engine's scale (written atomically);
    returns what happened."""
    started = time.perf_counter()
    source, target = Path(source), Path(target)
    output_format(target)  # an unknown output type fails before any work
    if class_map is not None:
        output_format(class_map)
        _check_free(class_map, overwrite, protect=[source, target])
    reader = open_image(source, max_pixels=max_pixels)
    info = reader.info
    layout = Layout(color_channels=info.color_channels, has_alpha=info.has_alpha)
    tally = engine.new_tally()
    total_tiles = _tile_count(info.height, info.width)
    grid = ClassGrid()

    def on_tiles(count, classes, band_rows, cols):
        grid.add(count, classes, band_rows, cols)
        if on_progress is not None:
            on_progress(tally.tiles, total_tiles)

    scale = engine.scale
    engine_time = [0.0]
    with ImageWriter(
        target,
        info.width * scale,
        info.height * scale,
        channels=layout.channels,
        bit_depth=info.bit_depth,
        has_alpha=info.has_alpha,
        **info.metadata,
        overwrite=overwrite,
        protect=[source],
    ) as writer:
        out_dtype = np.uint8 if writer.bit_depth == 8 else np.uint16
        rows = max(8, min(READ_ROWS, READ_BYTES // (4 * info.width * layout.channels)))
        strips = in_background(reader.strips(rows=rows), depth=1)
        output = engine.stream(info.height, info.width, strips, layout, tally, on_tiles, out_dtype=out_dtype)
        timed = _timed(output, engine_time, release=writer.encodes_after_writing)
        consume_in_background(writer.write, timed, depth=1)  # a band can be large
    written_map = None
    if class_map is not None:
        from classsr_cli.imaging.classmap import write_class_map

        write_class_map(
            source, class_map, grid.as_array(), grid.rows, grid.cols, engine.num_classes, overwrite
        )
        written_map = str(class_map)
    return ImageReport(
        input=str(source),
        output=str(target),
        width=info.width,
        height=info.height,
        out_width=info.width * scale,
        out_height=info.height * scale,
        tiles=tally.tiles,
        class_counts=tally.class_counts,
        flops_ratio=tally.flops_ratio(engine.plan),
        seconds=time.perf_counter() - started,
        engine_seconds=engine_time[0],
        device=str(engine.device),
        executed_ratio=tally.executed_ratio(engine.plan),
        tiling=engine.tiling,
        class_map=written_map,
        pages=info.pages,
        page_word=info.page_word,
        metadata_dropped=[*info.unread, *writer.dropped],
        converted=writer.converted,
    )


def release_freed_memory() -> None:
    """Give memory the process has freed back to the system where the C library keeps it (glibc's
    malloc_trim): the engine's bands are freed before the writer's encoder starts, which for very wide
    images (libvips holding hundreds of rows of them) would otherwise add to the peak. A no-op elsewhere.
    It costs 7-13 ms after a 1920x1080 output, and the next image's memory is then mapped again, so it is
    called only where the encoder waits for the last strip (`ImageWriter.encodes_after_writing`)."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library (musl): nothing to do
        pass


def _timed(strips, total: list[float], release: bool):
    """Yield from `strips`, adding the time spent producing them to total[0]; when they end and `release`
    is set, freed memory goes back to the system (`release_freed_memory`) before the consumer goes on."""
    iterator = iter(strips)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            total[0] += time.perf_counter() - start
            if release:
                release_freed_memory()
            return
        total[0] += time.perf_counter() - start
        yield item


_DONE = object()
# Producer threads still making an item after their consumer stopped (an error, Ctrl-C): the interpreter
# must not finalise around one that is inside a network or a decoder (that aborts the process), so at exit
# each gets until EXIT_WAIT_SECONDS to finish its item. The CLI ends a stopped run without finalising at all
# (`interrupts.leave`); this is for Python programs that catch the interruption and go on to exit.
_PRODUCERS: dict[threading.Thread, threading.Event] = {}
EXIT_WAIT_SECONDS = 30.0


@atexit.register
def _stop_producers() -> None:
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    for thread, stop in list(_PRODUCERS.items()):
        stop.set()
        thread.join(max(0.0, deadline - time.monotonic()))


def _put_unless(waiting: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` into `waiting`, waiting for room, unless `stop` is set first; whether it was put."""
    while not stop.is_set():
        try:
            waiting.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def in_background(items, depth: int = 2):
    """Yield the items of `items`, produced ahead by a thread of their own (at most `depth` waiting).

    An exception raised while producing is raised here, at the item it replaced. When the consumer stops
    early (an error, Ctrl-C), the thread stops at its next item and closes `items` (so that a nested
    in_background stops its own thread); nobody waits for it then, but the interpreter's exit does."""
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry) -> bool:
        return _put_unless(waiting, entry, stop)

    def produce():
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            offer((_DONE, error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            _PRODUCERS.pop(threading.current_thread(), None)

    thread = threading.Thread(target=produce, daemon=True)
    _PRODUCERS[thread] = stop
    thread.start()
    try:
        while True:
            item, error = waiting.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()  # the thread sees it once the item it is making is made


class Abandoned(Exception):
    """What a background consumer's items raise when their producer stopped (an error, Ctrl-C): it abandons
    its work (the image writer removes its files) and ends."""


def consume_in_background(consume: Callable[[Iterable], object], items: Iterable, depth: int = 1) -> object:
    """`consume(iterator)` run in a thread of its own while this thread produces `items` (at most `depth`
    waiting); returns what `consume` returned.

    The mirror of `in_background`, for work that must stay on the calling thread (the engine, whose PyTorch
    operators use the caller's OpenMP pool). An exception from `consume` (a write error) is raised here, at
    the next item or at the end. An exception while producing (Ctrl-C included) makes the consumer's
    iterator raise `Abandoned`; once the consumer has ended, the exception is raised here."""
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    outcome: list = []  # ("returned", value) or ("raised", error)
    ended = threading.Event()  # a Ctrl-C can interrupt Thread.join and leave the thread marked stopped

    def supply():
        while True:
            item = waiting.get()
            if item is _DONE:
                return
            if isinstance(item, Abandoned):
                raise item
            yield item

    def run():
        try:
            outcome.append(("returned", consume(supply())))
        except BaseException as error:  # noqa: BLE001 - handed to the producing thread
            outcome.append(("raised", error))
        finally:
            ended.set()

    def hand_over(item) -> bool:
        """Queue `item` unless the consumer has ended; False if it has."""
        return _put_unless(waiting, item, ended)

    thread = threading.Thread(target=run, name="classsr-consumer", daemon=True)
    thread.start()
    try:
        try:
            for item in items:
                if not hand_over(item):
                    break  # the consumer failed: its error is raised below
            else:
                hand_over(_DONE)
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator left early (the consumer failed) ends its own work now
                close()
        ended.wait()
    except BaseException:  # Ctrl-C included, also while the consumer finishes: it ends before the raise
        hand_over(Abandoned("the producer stopped"))
        ended.wait()
        raise
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


def _tile_count(height: int, width: int) -> int:
    return len(tile_starts(padded_size(height))) * len(tile_starts(padded_size(width)))


def _check_free(path: Path, overwrite: bool, protect: list[Path]) -> None:
    if any(path.resolve() == p.resolve() for p in protect):
        raise OutputError(f"{path} is also an input or output of this run")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists: {OVERWRITE_HINT} to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"output folder {path.parent} does not exist")
