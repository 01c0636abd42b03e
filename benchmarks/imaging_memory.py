"""Peak memory of streamed reading + writing, for images of growing height.

Each case runs in a fresh child process that reads an image strip by strip and writes it straight back out
through ImageWriter. The child reports its peak resident memory (VmHWM) above its baseline after imports, and
the largest anonymous (heap) memory it saw between strips. If streaming works, both stay flat as the height
grows, far below the size of the decoded image.

Resident memory also counts file pages the process maps. That matters for EXIF-rotated images only: rotating
needs random access, so libvips decodes them once into a temporary file and maps it; those pages are page
cache the kernel can reclaim, which is why the heap column is shown as well.

    python benchmarks/imaging_memory.py                     # 2000 x 5000 and 2000 x 20000
    python benchmarks/imaging_memory.py --width 4000 --heights 10000 40000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, source kind, output suffix)
CASES = [
    ("read only, PNG 8-bit", "png8", None),
    ("PNG 8-bit -> PNG", "png8", ".png"),
    ("PNG 8-bit -> TIFF", "png8", ".tif"),
    ("JPEG -> JPEG", "jpeg", ".jpg"),
    ("PNG 16-bit -> TIFF 16-bit", "png16", ".tif"),
    ("JPEG, EXIF rotated -> PNG", "jpeg_rotated", ".png"),
]


def memory_mib() -> dict[str, float]:
    """Peak resident (VmHWM) and current anonymous (RssAnon) memory of this process, in MiB."""
    try:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "RssAnon")}
    except (OSError, KeyError):
        # no procfs: ru_maxrss (KiB on Linux) is the nearest, though it can include the parent's peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"VmHWM": peak, "RssAnon": float("nan")}


def make_sources(folder: Path, width: int, height: int) -> dict[str, Path]:
    """Photo-like test images (smooth shapes plus grain), made with libvips without holding them in memory."""
    import pyvips

    coarse = pyvips.Image.gaussnoise(-(-width // 32), -(-height // 32), sigma=50, mean=128)
    base = coarse.resize(32, kernel="cubic").crop(0, 0, width, height)
    grain = pyvips.Image.gaussnoise(width, height, sigma=6, mean=0)
    rgb = (base + grain).bandjoin([base * 0.8 + grain + 20, base * 0.6 + grain + 40])
    rgb8 = rgb.cast("uchar").copy(interpretation="srgb")
    sources = {
        kind: folder / f"{kind}_{height}{suffix}"
        for kind, suffix in [("png8", ".png"), ("png16", ".png"), ("jpeg", ".jpg"), ("jpeg_rotated", ".jpg")]
    }
    rgb8.pngsave(str(sources["png8"]), compression=1)
    (rgb8.cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16").pngsave(
        str(sources["png16"]), compression=1
    )
    rgb8.jpegsave(str(sources["jpeg"]), Q=90)
    rotated = rgb8.copy()
    rotated.set_type(pyvips.GValue.gint_type, "orientation", 6)
    rotated.jpegsave(str(sources["jpeg_rotated"]), Q=90)
    return sources


def child(source: str, target: str | None, rows: int) -> None:
    """Runs in a fresh process: stream `source` into `target` and print peak memory as JSON."""
    from classsr_cli.imaging import ImageWriter, open_image

    baseline = memory_mib()
    peak_anon = baseline["RssAnon"]
    start = time.perf_counter()
    reader = open_image(source)
    info = reader.info

    def sampled_strips():
        nonlocal peak_anon
        for _, strip in reader.strips(rows=rows):
            yield strip
            peak_anon = max(peak_anon, memory_mib()["RssAnon"])

    if target is None:
        for _ in sampled_strips():
            pass
    else:
        with ImageWriter(
            target,
            info.width,
            info.height,
            channels=info.channels,
            bit_depth=info.bit_depth,
            icc=info.icc,
            exif=info.exif,
            xmp=info.xmp,
            overwrite=True,
        ) as writer:
            writer.write(sampled_strips())
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "baseline_mib": baseline["VmHWM"],
                "peak_mib": memory_mib()["VmHWM"],
                "baseline_anon_mib": baseline["RssAnon"],
                "peak_anon_mib": peak_anon,
                "seconds": seconds,
                "width": info.width,
                "height": info.height,
                "channels": info.channels,
            }
        )
    )


def run_child(*arguments: str) -> dict:
    # Everything heavy runs in children: the parent stays small, so no child inherits a large peak from it.
    command = [sys.executable, __file__, *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--heights", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--rows", type=int, default=256, help="strip height")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--make-sources", nargs=3, metavar=("FOLDER", "W", "H"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        source, target = args.child
        child(source, None if target == "-" else target, args.rows)
        return
    if args.make_sources:
        folder, width, height = args.make_sources
        sources = make_sources(Path(folder), int(width), int(height))
        print(json.dumps({kind: str(path) for kind, path in sources.items()}))
        return

    print(f"strip height {args.rows} rows; MiB; 'peak' is VmHWM, 'added' is peak minus the baseline after")
    print("imports, 'heap' is the largest anonymous memory seen between strips (minus its baseline)")
    header = (
        f"{'case':28} {'size':>11} {'float32 image':>13} {'baseline':>8} {'peak':>6} {'added':>6} "
        f"{'heap':>6} {'time':>6}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="classsr-imaging-bench-") as temp:
        folder = Path(temp)
        for height in args.heights:
            sources = run_child("--make-sources", str(folder), str(args.width), str(height))
            for name, kind, suffix in CASES:
                target = folder / f"out{suffix}" if suffix else None
                result = run_child(
                    "--child", sources[kind], str(target) if target else "-", "--rows", str(args.rows)
                )
                float_mib = result["width"] * result["height"] * result["channels"] * 4 / 2**20
                added = result["peak_mib"] - result["baseline_mib"]
                heap = result["peak_anon_mib"] - result["baseline_anon_mib"]
                size = f"{result['width']}x{result['height']}"
                print(
                    f"{name:28} {size:>11} {float_mib:>13.0f} {result['baseline_mib']:>8.0f} "
                    f"{result['peak_mib']:>6.0f} {added:>6.0f} {heap:>6.0f} {result['seconds']:>5.1f}s"
                )
                if target is not None:
                    target.unlink()
            for path in sources.values():
                Path(path).unlink()


if __name__ == "__main__":
    main()
