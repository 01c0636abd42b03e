"""Files written atomically: the one way this project writes a file that others read.

A file is written under a hidden temporary name in the target's own folder (`.NAME.XXXXXXXX.tmp`) and
renamed over the target only when complete, so a reader sees the old file or the new one, never half of
one; on any exception (Ctrl-C included) the temporary file is removed. A finished file gets the
permissions any new file gets, 0666 less the umask (mkstemp alone would leave 0600).

Streamed images have a writer of their own (`imaging/writer.py`: unnamed files where the system has them,
so that even a killed process leaves nothing), which keeps the same permissions.
"""

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def new_file_mode(folder: bool = False) -> int:
    """The permission bits a new file (0666) or folder (0777) gets under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def publish(temp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the permissions of a new file and rename it over `path`."""
    os.chmod(temp, new_file_mode())
    os.replace(temp, path)


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths`, for writers that take a file name (torch.save,
    safetensors, numpy); when the block ends normally they are renamed over `paths`, in order, after all
    were written. On an exception every temporary file is removed and no target is touched."""
    targets = [Path(path) for path in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(handle)
            temps.append(Path(temp))
        yield list(temps)
        for temp, target in zip(temps, targets, strict=True):
            publish(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """One temporary path beside `path`, renamed over it when the block ends normally (`atomic_paths`)."""
    with atomic_paths([path]) as (temp,):
        yield temp


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", newline: str | None = None) -> Iterator[IO]:
    """`open(path, mode)` for writing, made atomic: the file appears at `path` complete or not at all."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as temp, open(temp, mode, encoding=encoding, newline=newline) as handle:
        yield handle


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w", newline="") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, document) -> None:
    """Write `document` as JSON indented by 2, with a final newline, to `path` atomically."""
    write_text(path, json.dumps(document, indent=2) + "\n")
