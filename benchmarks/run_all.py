"""`make bench`: every heavy measurement behind the README's figures, one after the other.

Run on a quiet machine: the timings share the CPU with anything else running. Each step prints JSON.
Bench on the validation photos needs a data root with the photos (CLASSSR_VAL, default ./datasets/val).
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
    run("-m", "benchmarks.engine_memory", "--sizes", "600,2400")
    run("benchmarks/imaging_memory.py")
    run("benchmarks/train_speed.py", "--families", "fsrcnn,carn")
    val = Path(os.environ.get("CLASSSR_VAL", ROOT / "datasets" / "val"))
    if val.is_dir():
        from classsr_cli.weights import shipped_families

        for family in shipped_families("classsr"):  # bench compares a ClassSR model with its base network
            run("-m", "classsr_cli", "bench", str(val), "--model", family, "--json")
    else:
        print(f"\n(skipped bench: no validation photos at {val}; set CLASSSR_VAL)")


if __name__ == "__main__":
    main()
