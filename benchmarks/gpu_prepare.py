"""`make gpu-run`: fill .gpu/ with what a GPU machine without a network needs, and print the call to make.

    python -m benchmarks.gpu_prepare [--photos datasets/photos]
    python -m benchmarks.gpu_prepare --families rcan --resume training/rcan [--val datasets/val]

.gpu/photos   the training photos, made to fit what is left of the 64 MiB a call carries (`shrink_photos`)
.gpu/val      with --resume: the central crops of the validation photos that the ledger's curve scores
              (lossless PNG, `slimmable.central_square`), read there without pyvips
.gpu/wheels   the whole job: pyvips, pyvips-binary, cffi and pycparser for CPython 3.12 on manylinux x86_64,
              for reading and writing images there (the CUDA checks and `classsr upscale`; the job trains
              without them), and pytest with its dependencies, which runs the CUDA checks; a ledger call
              (--resume): platformdirs alone, which the weights folder needs to load the reference network
It counts what travels (`gpu_run.transfer_plan`: the checkout's files, tracked and untracked ones git does
not ignore, a ledger's weights at the size they will have, and .gpu/), stops when it passes 64 MiB, then
prints the command line, what to bring along, the time limit and, for a ledger, how to add the result back.
"""

import argparse
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.gpu_run import CARRY_LIMIT, LOG, REPORT, format_plan, transfer_plan
from benchmarks.gpu_run import GPU as GPU_PROFILE
from classsr_cli.imaging.photos import list_photos
from classsr_cli.train.packing import MIB

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / ".gpu"
SECONDS = 540  # the job's own budget: everything, the engine table included, ends inside it
TIMEOUT = 570  # the call's limit: 30 s for Python and CUDA to start and for the last files to be written
# kept free under the 64 MiB for what changes between preparing and the call: the curve, edits to the code
HEADROOM = MIB
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
BINARY_WHEELS = ("pyvips-binary", "cffi", "pycparser", "pytest", "platformdirs")
LEDGER_WHEELS = ("platformdirs",)
PYTHON = "P=$(command -v python || command -v python3)"
# a re-encoded photo: JPEG at this quality with full-resolution colour (4:4:4)
JPEG_QUALITY = 92
PROBE_PIXELS = 500_000  # each photo's bits per pixel are measured once at this size, to plan the cap
VAL_CROP = GPU_PROFILE.val_crop  # LR pixels of a validation crop, as the ledger call's recipe takes them


def install_line(wheels: tuple[str, ...]) -> str:
    return (
        '$P -m pip install -q --no-index --find-links .gpu/wheels --target "$PWD/.gpu-site" '
        + " ".join(wheels)
        + ' || echo "the wheels did not install: what needs them will fail or be skipped"'
    )


# -- photos ----------------------------------------------------------------------------------------


def _reduced(photo: np.ndarray, cap: float) -> np.ndarray:
    """The photo shrunk (MATLAB bicubic, as `gpu_run --reduce`) to at most `cap` pixels; itself if it fits."""
    from classsr_cli.imaging.bicubic import imresize, matlab_uint8

    pixels = photo.shape[0] * photo.shape[1]
    if pixels <= cap:
        return photo
    return matlab_uint8(imresize(photo.astype(np.float32), math.sqrt(cap / pixels)))


def _jpeg(photo: np.ndarray) -> bytes:
    import cv2

    parameters = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    parameters += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(photo[:, :, ::-1]), parameters)
    if not ok:
        raise SystemExit("error: OpenCV could not encode a JPEG")
    return data.tobytes()


def _is_jpeg(path: Path) -> bool:
    return path.suffix.lower() in (".jpg", ".jpeg")


def shrink_photos(sources: list[Path], target: Path, budget: int) -> dict:
    """Photos into `target` in at most `budget` bytes: every photo larger than a common pixel cap is shrunk
    to it and saved as JPEG (quality JPEG_QUALITY, 4:4:4), as is every photo that is not a JPEG file; a
    JPEG within the cap is copied unchanged. The cap is the largest that fits: planned from each photo's
    bytes per pixel at PROBE_PIXELS, then lowered until the files written fit. Returns {"cap": pixels,
    "bytes": written, "reduced": count, "photos": count}; SystemExit when even a small cap does not fit."""
    from classsr_cli.imaging.photos import read_rgb8

    names = [path.name if _is_jpeg(path) else f"{path.stem}.jpg" for path in sources]
    if len(set(names)) != len(names):
        raise SystemExit("error: two photos would take the same name in .gpu/photos: rename one")
    measured = []  # (pixels, file bytes, is a JPEG, bits per pixel once re-encoded)
    for path in sources:
        photo = read_rgb8(path)
        small = _reduced(photo, PROBE_PIXELS)
        bits = 8 * len(_jpeg(small)) / (small.shape[0] * small.shape[1])
        measured.append((photo.shape[0] * photo.shape[1], path.stat().st_size, _is_jpeg(path), bits))

    def planned(cap: float) -> float:
        return sum(
            size if jpeg and pixels <= cap else bits * min(pixels, cap) / 8
            for pixels, size, jpeg, bits in measured
        )

    low, high = 1_000.0, float(max(m[0] for m in measured))
    if planned(high) <= budget:
        cap = high
    else:
        for _ in range(40):
            middle = math.sqrt(low * high)
            low, high = (middle, high) if planned(middle) <= budget else (low, middle)
        cap = low
    target.mkdir(parents=True, exist_ok=True)
    while True:
        for stale in target.iterdir():
            stale.unlink()
        written, reduced = 0, 0
        for path, name, (pixels, _, jpeg, _) in zip(sources, names, measured, strict=True):
            if jpeg and pixels <= cap:
                shutil.copyfile(path, target / name)
            else:
                (target / name).write_bytes(_jpeg(_reduced(read_rgb8(path), cap)))
                reduced += pixels > cap
            written += (target / name).stat().st_size
        if written <= budget:
            return {"cap": int(cap), "bytes": written, "reduced": reduced, "photos": len(sources)}
        if cap < 50_000:
            raise SystemExit(
                f"error: the photos do not fit in {budget / MIB:.1f} MiB even at {cap:.0f} pixels"
            )
        cap *= 0.95 * budget / written


def write_val_crops(source: Path, target: Path, lr_size: int = VAL_CROP) -> int:
    """The central (4 x lr_size)-pixel square of each validation photo as a PNG in `target` (`<stem>.png`),
    read with the project's reader: a crop gives the same `central_crops` as its photo. Returns the count."""
    import cv2

    from classsr_cli.imaging.photos import read_rgb8
    from classsr_cli.train.slimmable import central_square

    photos = list_photos(source)
    if not photos:
        raise SystemExit(f"error: no validation photos in {source}")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in photos:
        crop = central_square(read_rgb8(path), 4 * lr_size)
        cv2.imwrite(str(target / f"{path.stem}.png"), crop[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return len(photos)


# -- wheels ----------------------------------------------------------------------------------------


def fetch_wheels(folder: Path, names: tuple[str, ...], pyvips: bool) -> list[str]:
    """The wheels `names` (and their dependencies) into a fresh `folder`, from the package index (pip's cache
    first); with `pyvips`, its pure-Python wheel too (pyvips 2.2 and later ship none: pip builds it)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    platforms = [argument for name in PLATFORMS for argument in ("--platform", name)]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "download", "--only-binary=:all:", "--python-version", "3.12", *platforms]
        + ["-d", str(folder), *names],
        check=True,
    )
    if pyvips:
        subprocess.run([*pip, "wheel", "--no-deps", "pyvips>=2.2", "-w", str(folder)], check=True)
    wheels = sorted(path.name for path in folder.glob("*.whl"))
    built = [name for name in wheels if name.startswith("pyvips-")]
    if pyvips and (not built or not all(name.endswith("-py3-none-any.whl") for name in built)):
        raise SystemExit(f"error: expected a pure-Python pyvips wheel in {folder}, found {built}")
    return wheels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", default="datasets/photos", help="Folder of training photos.")
    parser.add_argument("--families", default="", help="Families the call trains (default: all four).")
    parser.add_argument("--resume", metavar="LEDGER", help="A call for this slimmable ledger folder.")
    parser.add_argument("--val", default="datasets/val", help="With --resume: folder of validation photos.")
    args = parser.parse_args()
    photos = Path(args.photos)
    if not photos.is_absolute():
        photos = ROOT / photos
    if not photos.is_dir():
        raise SystemExit(
            f"error: there is no photo folder at {photos}: pass the training photos with "
            "`make gpu-run GPU_PHOTOS=DIR` (or --photos DIR)"
        )
    sources = list_photos(photos)
    if len(sources) < 2:
        raise SystemExit(
            f"error: {photos} holds {len(sources)} photo(s); the job needs at least 2 (one is held out)"
        )
    ledger, family, width = None, "", 0
    if args.resume:
        from classsr_cli.models import get_family
        from classsr_cli.train.slimmable import SLIMMABLE_FAMILIES

        families = [get_family(f).name for f in args.families.split(",") if f.strip()]
        if len(families) != 1 or families[0] not in SLIMMABLE_FAMILIES:
            raise SystemExit(f"error: --resume needs --families with one of {', '.join(SLIMMABLE_FAMILIES)}")
        ledger, family = Path(args.resume), families[0]
        width = max(get_family(family).widths_for(3))
        wheels = fetch_wheels(GPU / "wheels", LEDGER_WHEELS, pyvips=False)
        val = Path(args.val) if Path(args.val).is_absolute() else ROOT / args.val
        crops = write_val_crops(val, GPU / "val")
    else:
        wheels = fetch_wheels(GPU / "wheels", BINARY_WHEELS, pyvips=True)
        shutil.rmtree(GPU / "val", ignore_errors=True)
        crops = 0
    shutil.rmtree(GPU / "photos", ignore_errors=True)
    plan = transfer_plan(GPU, ledger, family, width)
    budget = CARRY_LIMIT - HEADROOM - plan["total"]
    if budget < 2 * MIB:
        raise SystemExit(f"error: {format_plan(plan)}: too little is left for the photos")
    shrunk = shrink_photos(sources, GPU / "photos", budget)
    plan = transfer_plan(GPU, ledger, family, width)
    print(
        f"\n.gpu/photos: {shrunk['photos']} photos, {shrunk['reduced']} shrunk to at most "
        f"{shrunk['cap'] / 1e6:.2f} MP, {shrunk['bytes'] / MIB:.1f} MiB"
        + (f"; .gpu/val: {crops} crops" if crops else "")
        + f"; .gpu/wheels: {', '.join(wheels)}"
    )
    print(format_plan(plan))
    if plan["total"] > CARRY_LIMIT:
        raise SystemExit(f"error: {plan['total'] / MIB:.1f} MiB does not fit in 64 MiB")
    if args.resume:
        job = (
            f'PYTHONPATH="$PWD/.gpu-site" $P -m benchmarks.gpu_run --families {family} --resume {args.resume}'
            f' --out "$OUT" --seconds {SECONDS}'
        )
        install = install_line(LEDGER_WHEELS)
    else:
        families = f" --families {args.families}" if args.families else ""
        job = (
            f'PYTHONPATH="$PWD/.gpu-site" $P -m benchmarks.gpu_run --out "$OUT" --seconds {SECONDS}{families}'
        )
        install = install_line(("pyvips", "pyvips-binary", "pytest", "platformdirs"))
    print(
        "\nOn the GPU machine, in the checkout root, with OUT naming the output folder that comes back:\n"
        f"\n  {PYTHON}; {install}; {job}\n"
        f"\nBring along: .gpu   Time limit: {TIMEOUT} s\n"
    )
    if args.resume:
        print(
            "Then here, with RETURNED naming the folder its files came back to:\n"
            f"\n  .venv/bin/python -m benchmarks.gpu_run --add-back RETURNED --resume {args.resume}"
            f" && git add {args.resume}\n"
        )
    else:
        print(
            f"It leaves part 1 of the weights, {REPORT} and {LOG} in $OUT. If {REPORT} lists more parts,\n"
            "copy each out at once with a second call (the machine keeps them on its disk while it is up):\n"
            f'\n  {PYTHON}; $P -m benchmarks.gpu_run --collect 2 --out "$OUT"\n'
        )


if __name__ == "__main__":
    main()
