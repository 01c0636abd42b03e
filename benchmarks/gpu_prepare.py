"""`make gpu-run`: fill .gpu/ with what a GPU machine without a network needs, and print the call to make.

    python -m benchmarks.gpu_prepare [--photos datasets/photos]

.gpu/photos   a copy of the training photos (the job trains on them; the checkout does not hold them)
.gpu/wheels   pyvips, pyvips-binary, cffi and pycparser for CPython 3.12 on manylinux x86_64, for reading and
              writing images there (the CUDA checks and `classsr upscale`; the job trains without them),
              and pytest with its dependencies, which runs the CUDA checks
It checks that the checkout's files (tracked, and untracked ones git does not ignore) and .gpu/ together
stay under the 64 MiB a call can carry, then prints the command line, what to bring along and the time limit.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_run import LOG, REPORT
from classsr_cli.imaging.photos import list_photos

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / ".gpu"
CARRY_LIMIT = 64 << 20
SECONDS = 540  # the job's own budget: everything, the engine table included, ends inside it
TIMEOUT = 570  # the call's limit: 30 s for Python and CUDA to start and for the last files to be written
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
BINARY_WHEELS = ("pyvips-binary", "cffi", "pycparser", "pytest", "platformdirs")
PYTHON = "P=$(command -v python || command -v python3)"
INSTALL = (
    '$P -m pip install -q --no-index --find-links .gpu/wheels --target "$PWD/.gpu-site" pyvips pyvips-binary'
    ' pytest platformdirs || echo "the wheels did not install: the checks that need them will be skipped"'
)


def copy_photos(source: Path, target: Path) -> int:
    """Mirror the photos of `source` into `target` (unchanged files are not copied again); count them."""
    photos = list_photos(source)
    target.mkdir(parents=True, exist_ok=True)
    names = {path.name for path in photos}
    for stale in target.iterdir():
        if stale.name not in names:
            stale.unlink()
    for path in photos:
        copy = target / path.name
        if not copy.exists() or copy.stat().st_size != path.stat().st_size:
            shutil.copyfile(path, copy)
    return len(photos)


def fetch_wheels(folder: Path) -> list[str]:
    """The wheels, from the package index (pip's cache first). pyvips 2.2 and later ship no wheel: pip builds
    its pure-Python one (py3-none-any) from the source package."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [argument for name in PLATFORMS for argument in ("--platform", name)]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "download", "--only-binary=:all:", "--python-version", "3.12", *platforms]
        + ["-d", str(folder), *BINARY_WHEELS],
        check=True,
    )
    subprocess.run([*pip, "wheel", "--no-deps", "pyvips>=2.2", "-w", str(folder)], check=True)
    wheels = sorted(path.name for path in folder.glob("*.whl"))
    pyvips = [name for name in wheels if name.startswith("pyvips-")]
    if not pyvips or not all(name.endswith("-py3-none-any.whl") for name in pyvips):
        raise SystemExit(f"error: expected a pure-Python pyvips wheel in {folder}, found {pyvips}")
    return wheels


def carried_bytes() -> tuple[int, int]:
    """(bytes of the checkout's files that travel, bytes of .gpu/)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    tree = sum(
        (ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file()
    )
    extra = sum(path.stat().st_size for path in GPU.rglob("*") if path.is_file())
    return tree, extra


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", default="datasets/photos", help="Folder of training photos.")
    args = parser.parse_args()
    photos = Path(args.photos)
    if not photos.is_absolute():
        photos = ROOT / photos
    if not photos.is_dir():
        raise SystemExit(
            f"error: there is no photo folder at {photos}: pass the training photos with "
            "`make gpu-run GPU_PHOTOS=DIR` (or --photos DIR)"
        )
    count = copy_photos(photos, GPU / "photos")
    if count < 2:
        raise SystemExit(
            f"error: {photos} holds {count} photo(s); the job needs at least 2 (one is held out)"
        )
    wheels = fetch_wheels(GPU / "wheels")
    tree, extra = carried_bytes()
    total = tree + extra
    print(f"\n.gpu/photos: {count} photos; .gpu/wheels: {', '.join(wheels)}")
    print(
        f"carried: checkout {tree / 2**20:.1f} MiB + .gpu {extra / 2**20:.1f} MiB = {total / 2**20:.1f} MiB"
    )
    if total >= CARRY_LIMIT:
        raise SystemExit(f"error: {total / 2**20:.1f} MiB does not fit in 64 MiB: leave some photos out")
    job = f'PYTHONPATH="$PWD/.gpu-site" $P -m benchmarks.gpu_run --out "$OUT" --seconds {SECONDS}'
    print(
        "\nOn the GPU machine, in the checkout root, with OUT naming the output folder that comes back:\n"
        f"\n  {PYTHON}; {INSTALL}; {job}\n"
        f"\nBring along: .gpu   Time limit: {TIMEOUT} s\n"
        f"\nIt leaves part 1 of the weights, {REPORT} and {LOG} in $OUT. If {REPORT} lists more parts, copy\n"
        "each out at once with a second call (the machine keeps them on its disk while it stays up):\n"
        f'\n  {PYTHON}; $P -m benchmarks.gpu_run --collect 2 --out "$OUT"\n'
    )


if __name__ == "__main__":
    main()
