"""Planning an upscale run before any work: which file goes where, refusing any plan that could lose a file.

Rules (checked before a model is loaded or a byte is written):
- Two planned files (outputs and class maps) may not share a name; names are compared ignoring case, because
  an output folder on a case-insensitive file system (macOS, Windows, exFAT, SMB) would merge them.
- No planned file may be an input of the run, whatever --overwrite says: same name, a symbolic or a hard link.
- A folder run skips dot-files (hidden files, macOS `._*` AppleDouble files), and entries named like images
  that are no regular file (a folder, a dangling symbolic link, a FIFO), which `skipped` lists, for the run to
  say so. Outputs keep the input's name
  and, when it is writable, its type (else PNG): `photo.png` and `photo.gif` would both make `photo.png` and
  are refused, naming both. Class maps are named `STEM.classes.png`, or `NAME.classes.png` (e.g.
  `photo.jpg.classes.png`) for inputs that share a stem; the plan says so in `notes`.
- Without --overwrite, a folder run leaves the images whose output (or class map) exists alone: they are
  planned as `existing`, not as jobs, so that a rerun does only the new images and the run says so once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from classsr_cli.errors import OVERWRITE_HINT, InputError, OutputError
from classsr_cli.imaging import output_format
from classsr_cli.imaging.photos import list_photos, odd_entries

WRITABLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"}
CLASS_MAP_SUFFIX = ".classes.png"


@dataclass(frozen=True)
class Job:
    """One image of a run: where it is read from, where its result and its class map (if any) go."""

    source: Path
    target: Path
    class_map: Path | None = None


@dataclass
class RunPlan:
    jobs: list[Job]
    from_folder: bool  # the input was a folder (reports are a list)
    notes: list[str] = field(default_factory=list)  # names chosen that the user did not ask for
    folders: list[Path] = field(default_factory=list)  # made by make_folders(), before the first write
    skipped: list[str] = field(default_factory=list)  # input entries named like images that are not, in words
    existing: list[Job] = field(default_factory=list)  # folder runs: images left alone, their output exists

    def make_folders(self) -> None:
        """Create the output (and class map) folders of a folder run; OutputError if that fails."""
        for folder in self.folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(f"cannot create the folder {folder} ({error.strerror or error})") from None


def plan_run(
    source: Path | str,
    target: Path | str,
    class_map: Path | str | None = None,
    *,
    overwrite: bool = False,
) -> RunPlan:
    """Plan upscaling `source` (an image, or a folder of images) into `target` (a file, or a folder).

    `class_map` is a file for one image, a folder for a folder of images. Raises InputError when the input
    is missing or holds no image, OutputError for an output that cannot be planned safely (unknown type,
    two files on one name, an input as output, a file where a folder is needed, an existing output
    without `overwrite` for a single image, a missing folder for a single image). In a folder run without
    `overwrite`, images whose output or class map exists go to `existing` instead of `jobs`. Nothing is
    written.
    """
    source, target = Path(source), Path(target)
    class_map = Path(class_map) if class_map is not None else None
    if not source.exists():
        raise InputError(f"input not found: {source}")
    if source.is_dir():
        plan = _plan_folder(source, target, class_map)
        _refuse_collisions(plan.jobs)  # all of them: an input as output is refused, existing or not
        if not overwrite:
            existing = [_exists(job) for job in plan.jobs]
            plan.existing = [job for job, exists in zip(plan.jobs, existing, strict=True) if exists]
            plan.jobs = [job for job, exists in zip(plan.jobs, existing, strict=True) if not exists]
        return plan
    return _plan_file(source, target, class_map, overwrite)


def _plan_file(source: Path, target: Path, class_map: Path | None, overwrite: bool) -> RunPlan:
    if target.is_dir():
        raise OutputError(f"{target} is a folder: give an output file name such as {target / source.name}")
    for path, what in ((target, "output"), (class_map, "--class-map")):
        if path is None:
            continue
        output_format(path)
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder: give a file name")
        if not path.parent.is_dir():
            raise OutputError(f"{what} {path}: the folder {path.parent} does not exist")
    _refuse_collisions([Job(source, target, class_map)])  # the input first: its message beats "exists"
    for path, what in ((target, "output"), (class_map, "--class-map")):
        if path is not None and path.exists() and not overwrite:
            raise OutputError(f"{what} {path} already exists: {OVERWRITE_HINT} to replace it")
    return RunPlan([Job(source, target, class_map)], from_folder=False)


def _plan_folder(source: Path, target: Path, class_map: Path | None) -> RunPlan:
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} is a file, but the input is a folder: give an output folder")
    if class_map is not None and class_map.exists() and not class_map.is_dir():
        raise OutputError(f"--class-map must name a folder when the input is a folder: {class_map}")
    images = list_photos(source)
    skipped = [f"{path}: {what}" for path, what in odd_entries(source)]
    if not images:
        odd = f"; skipped {'; '.join(skipped)}" if skipped else ""
        raise InputError(f"no images found in {source} (hidden files are skipped){odd}")
    stems: dict[str, int] = {}
    for image in images:
        stems[image.stem.casefold()] = stems.get(image.stem.casefold(), 0) + 1
    jobs, notes = [], []
    for image in images:
        suffix = image.suffix if image.suffix.lower() in WRITABLE_SUFFIXES else ".png"
        map_path = None
        if class_map is not None:
            shared = stems[image.stem.casefold()] > 1
            map_path = class_map / f"{image.name if shared else image.stem}{CLASS_MAP_SUFFIX}"
            if shared:
                notes.append(f"{image.name}: class map {map_path.name} (another input shares its stem)")
        jobs.append(Job(image, target / f"{image.stem}{suffix}", map_path))
    folders = [target] + ([class_map] if class_map is not None else [])
    return RunPlan(jobs, from_folder=True, notes=notes, folders=folders, skipped=skipped)


def _exists(job: Job) -> bool:
    return any(path is not None and path.exists() for path in (job.target, job.class_map))


def _name_key(path: Path) -> tuple[str, str]:
    """The same key for any two spellings of one path, and for names that differ only in case."""
    return os.path.normcase(os.path.realpath(path.parent)), path.name.casefold()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)  # follows links: a link to an input is that input
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _refuse_collisions(jobs: list[Job]) -> None:
    inputs_by_key = {_name_key(job.source): job.source for job in jobs}
    inputs_by_id = {_file_id(job.source): job.source for job in jobs}
    inputs_by_id.pop(None, None)
    planned: dict[tuple[str, str], tuple[Path, Path]] = {}  # key -> (planned file, the input it comes from)
    for job in jobs:
        for path in (job.target, job.class_map):
            if path is None:
                continue
            key = _name_key(path)
            clash = inputs_by_key.get(key) or inputs_by_id.get(_file_id(path))
            if clash is not None:
                raise OutputError(
                    f"{path} would overwrite the input {clash}; inputs are never overwritten: "
                    "choose another output name or folder"
                )
            if key in planned:
                other_path, other_source = planned[key]
                if other_source == job.source:
                    raise OutputError(f"the output and the class map are both {path}: give them two names")
                raise OutputError(
                    f"{other_source} and {job.source} would both be written to {path}: "
                    "rename one of them, or upscale it on its own"
                )
            planned[key] = (path, job.source)
