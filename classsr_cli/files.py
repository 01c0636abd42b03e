"""Files written atomically: the one way this project writes a file that others read.

A file is written under a hidden temporary name in the target's own folder (`.NAME.XXXXXXXX.tmp`) and
renamed over the target only when complete, so a reader sees the old file or the new one, never half of
one; on any exception (Ctrl-C included) the temporary file is removed. A file is made with the
permissions any new file gets, 0666 less the umask, and keeps them when it takes the target's name.

`PartFile` is that mechanism: a file under construction beside its target, published (renamed into
place, or linked there only if the name is still free) or discarded. `atomic_paths`, `atomic_open`,
`write_text` and `write_json` use it for writers that take a name; the streamed image writer
(`imaging/writer.py`) uses it directly, with unnamed files where the system has them (Linux's O_TMPFILE,
linked into place through /proc/self/fd), so that even a killed process leaves nothing behind. Writers
that take a name get named files only: an unnamed one has no name but /proc/self/fd/N, which some
libraries resolve to a new file of their own.
"""

import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_PROC_FD = Path("/proc/self/fd")
# errors by which O_TMPFILE says "not here" (old kernels, file systems without it): use a named file instead
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}
UNNAMED_FILES_POSSIBLE = hasattr(os, "O_TMPFILE") and _PROC_FD.is_dir()


def new_file_mode(folder: bool = False) -> int:
    """The permission bits a new file (0666) or folder (0777) gets under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def hidden_name(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A hidden, random name beside `target`: `.NAME.XXXXXXXX{suffix}` (NAME cut to 100 characters).

    In the target's own folder, so that the final rename never crosses file systems."""
    target = Path(target)
    return target.with_name(f".{target.name[:100]}.{secrets.token_hex(4)}{suffix}")


class PartFile:
    """A file under construction beside `target`, open for reading and writing as `fd`.

    Unnamed (O_TMPFILE) when `unnamed` is asked for and the system has it, else under a `hidden_name`
    with `suffix`, created exclusively (never someone else's file). Either way its mode is 0666 less the
    umask, as for any new file. `io_path` opens it again by name (/proc/self/fd/N for an unnamed one);
    `publish` gives it the target's name; `discard` drops it. OSError when the folder takes no new file.
    """

    def __init__(self, target: str | os.PathLike, suffix: str = ".tmp", unnamed: bool = False):
        self.target = Path(target)
        self.fd: int | None = None
        self.path: Path | None = None  # the hidden name, only for a named file
        if unnamed and UNNAMED_FILES_POSSIBLE:
            try:
                # mode 0o666: the umask decides, as for any new file
                self.fd = os.open(self.target.parent, os.O_TMPFILE | os.O_RDWR, 0o666)
                return
            except OSError as error:
                if error.errno not in _NO_TMPFILE:
                    raise
        for _ in range(100):  # a name taken meanwhile: draw another
            path = hidden_name(self.target, suffix)
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            self.path = path
            return
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(self.target.parent))

    @property
    def io_path(self) -> str:
        """The name by which the file opens again (its hidden name, or /proc/self/fd/N)."""
        return os.fspath(self.path) if self.path is not None else f"{_PROC_FD}/{self.fd}"

    def close(self) -> None:
        """Close the descriptor and keep the file, for a writer that opens it by name (named files only)."""
        if self.path is None:
            raise ValueError("an unnamed file lives only while its descriptor is open")
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def publish(self, overwrite: bool = True) -> None:
        """Give the finished file the target's name, replacing what is there (`overwrite`) or only if the
        name is free: FileExistsError if it is taken, also when it was taken meanwhile."""
        target = self.target
        if self.path is None:
            # linkat(AT_SYMLINK_FOLLOW) of the /proc link names the unnamed file; fails if the name is taken
            name = target if not overwrite else hidden_name(target, target.suffix)
            _link_following(self.io_path, name)
            if overwrite:
                try:
                    os.replace(name, target)
                except BaseException:
                    name.unlink(missing_ok=True)
                    raise
            self.discard()
            return
        if not overwrite:
            # A hard link fails if the name was taken meanwhile, where a rename would silently replace it.
            try:
                os.link(self.path, target)
                self.discard()  # removes the hidden name; the file lives on under the target's
                return
            except FileExistsError:
                raise
            except OSError:  # file systems without hard links
                if target.exists():
                    raise FileExistsError(errno.EEXIST, "already exists", str(target)) from None
        os.replace(self.path, target)
        self.path = None  # renamed: nothing of ours left to remove
        self.discard()

    def discard(self) -> None:
        """Close (an unnamed file then vanishes) and remove a named one; best effort, never raises."""
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass  # already gone: the original error matters more than a leftover
            self.path = None
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _link_following(source: str, target: Path) -> None:
    """Hard-link `source`, following it if it is a symbolic link (as /proc/self/fd/N is), to `target`."""
    # CPython calls link(2), which does not follow, unless a dir_fd asks for linkat(2)
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(source, target.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths`, for writers that take a file name (torch.save,
    safetensors, numpy); when the block ends normally they are renamed over `paths`, in order, after all
    were written. On an exception every temporary file is removed and no target is touched. A writer
    that replaces the file (safetensors makes it anew, readable by its owner only) gets it back with the
    permissions any new file has (0666 less the umask)."""
    parts: list[PartFile] = []
    modes: list[int] = []
    try:
        for path in paths:
            part = PartFile(path)
            parts.append(part)
            modes.append(stat.S_IMODE(os.fstat(part.fd).st_mode))
            part.close()
        yield [part.path for part in parts]
        for part, mode in zip(parts, modes, strict=True):
            os.chmod(part.path, mode)
            part.publish()
    finally:
        for part in parts:
            part.discard()


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
