"""Peak memory of `classsr upscale` on a small and a large input: it must not grow with the image.

    python -m benchmarks.engine_memory [--sizes 600,2400,20000x120] [--model fsrcnn] [--json]

A size is N (an N x N input) or WxH (a panorama: 20000x120 makes an 80000x480 output).

Each run is a fresh process (the real CLI, in-process via Typer) whose peak resident memory is read from
getrusage at its end. Inputs are photo-like PNGs made for the purpose in a temporary folder.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import classsr_model, smooth_picture
from classsr_cli.imaging import write_image
from classsr_cli.weights import save_model, shipped_entry

CHILD = """
import resource, sys, time
from classsr_cli.cli import app
start = time.perf_counter()
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"PEAK {peak_kib} {time.perf_counter() - start:.2f}", file=sys.stderr)
"""


def peak_memory(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `classsr` command in a fresh process."""
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("PEAK ")]
    if result.returncode or not line:
        raise SystemExit(f"classsr failed: {result.stderr[-2000:]}")
    _, kib, seconds = line[-1].split()
    return int(kib) / 1024, float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="600,2400,20000x120", help="input sizes in LR pixels: N or WxH")
    parser.add_argument("--model", default="fsrcnn")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        weights_args = ["--model", args.model]
        if not shipped_entry(args.model, "classsr"):
            model, _ = classsr_model(args.model)
            weights_args += ["--weights", str(save_model(model, folder / "w.safetensors", args.model))]
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x")) if "x" in size else (int(size), int(size))
            source = folder / f"in{width}x{height}.png"
            write_image(source, smooth_picture(height, width))
            peak, seconds = peak_memory(
                ["upscale", str(source), str(folder / f"out{width}x{height}.png"), *weights_args]
            )
            rows.append(
                {
                    "input": f"{width}x{height}",
                    "output": f"{4 * width}x{4 * height}",
                    "peak_mib": round(peak),
                    "seconds": seconds,
                }
            )
            if not args.json:
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
