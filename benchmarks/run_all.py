"""`make bench`: every heavy measurement behind the README's figures, one after the other.

Run on a quiet machine: the timings share the CPU with anything else running. Each step prints JSON.
Bench on the validation photos needs a data root with the photos (CLASSSR_VAL, default ./datasets/val);
the denoising comparison a clean test set (CLASSSR_DENOISE_SET, default ./datasets/val-2k/Test2K, made by
`classsr make-testsets <val photos> datasets/val-2k --sizes 2k`).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main() -> None:
    run("-m", "benchmarks.engine_speed", "--families", "fsrcnn,carn,srresnet")
    run("-m", "benchmarks.engine_memory", "--sizes", "600,2400,20000x120")
    run("benchmarks/imaging_memory.py")
    run("benchmarks/train_speed.py", "--families", "fsrcnn,carn")
    val = Path(os.environ.get("CLASSSR_VAL", ROOT / "datasets" / "val"))
    if val.is_dir():
        from classsr_cli.imaging.photos import list_photos
        from classsr_cli.models import list_families
        from classsr_cli.weights import shipped_families

        for family in shipped_families("classsr"):  # bench compares a ClassSR model with its base network
            if family in list_families("upscale"):
                run("-m", "classsr_cli", "bench", str(val), "--model", family, "--json")
        # ClassSR against the base network run the usual way (64-pixel tiles), every shipped family
        photos = [str(path) for path in list_photos(val)]
        # the engine's own work (stand-in networks) on three crops: a CPU's layout and a GPU's
        for layout in ("device", "gpu"):
            run("-m", "benchmarks.engine_profile", *photos[:3], "--layout", layout)
        families = ",".join(
            family for family in shipped_families("classsr") if family in shipped_families("base")
        )
        run("-m", "benchmarks.plain_peer", *photos, "--families", families)
        # file to file, as a user runs it, against the plain way with OpenCV reading and writing
        upscalers = ",".join(family for family in families.split(",") if family in list_families("upscale"))
        run("-m", "benchmarks.end_to_end", *photos, "--families", upscalers)
        run("-m", "benchmarks.png_settings", *photos)  # the PNG encoder's settings, docs/formats.md
        run("-m", "benchmarks.branch_speed", "--families", upscalers)
    else:
        print(f"\n(skipped bench: no validation photos at {val}; set CLASSSR_VAL)")
    denoise_set = Path(os.environ.get("CLASSSR_DENOISE_SET", ROOT / "datasets" / "val-2k" / "Test2K"))
    from classsr_cli.weights import shipped_families

    if "dncnn" not in shipped_families("classsr") + shipped_families("base"):
        print("\n(skipped the denoising comparison: no DnCNN weights installed)")
    elif denoise_set.is_dir():
        run("-m", "benchmarks.denoise_nlm", str(denoise_set))
    else:
        print(f"\n(skipped the denoising comparison: no test set at {denoise_set}; set CLASSSR_DENOISE_SET)")


if __name__ == "__main__":
    main()
