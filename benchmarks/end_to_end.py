"""End to end, file to file: `classsr upscale` against the base network run the plain way with OpenCV.

    python -m benchmarks.end_to_end PHOTOS... [--families fsrcnn,carn] [--crop 1920x1080] [--repeats 3]

For each photo, the central crop (HR) is reduced x4 with MATLAB's bicubic and written as an 8-bit PNG: the
input. Then, in one process, rows take turns in --repeats rounds (each row's fastest round counts, summed
over the photos), each reading the PNG, upscaling it and writing a PNG:
- the plain way: OpenCV reads, the base (-O) network runs over the image in 64-pixel LR tiles with 8 pixels
  of context (`plain_peer.PlainTiles`), OpenCV writes at its default settings;
- ClassSR as `classsr upscale` runs it (the library's `upscale_file`: pyvips reading, the engine, the
  project's writer), with the engine built once, as for a folder;
- the base network through the same path (`--branch M`).
Time ratios are to the plain way; the engine's own seconds (`engine_seconds` of the report) are given too.
The paper-convention FLOPs ratio of each photo tells where ClassSR should be faster (at most 0.75).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.plain_peer import PlainTiles, central_crop
from classsr_cli.engine import Upscaler
from classsr_cli.engine.pipeline import upscale_file
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.weights import load_base_network, load_weights


def plain_file(network: PlainTiles, source: Path, target: Path) -> None:
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
    out = network(np.ascontiguousarray(image))
    cv2.imwrite(str(target), np.ascontiguousarray(unit_to_uint8(out)[:, :, ::-1]))


def _plain_row(plain: PlainTiles):
    return lambda source, target: plain_file(plain, source, target)


def _engine_row(engine: Upscaler, name: str, reports: dict):
    def call(source: Path, target: Path) -> None:
        reports[name] = upscale_file(engine, source, target, overwrite=True)

    return call


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--families", default="fsrcnn,carn")
    parser.add_argument("--crop", default="1920x1080", help="HR crop WxH from each photo's centre")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.crop.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="end-to-end-"))
    inputs = []
    for index, photo in enumerate(args.photos):
        _, lr = central_crop(photo, width, height)
        path = folder / f"in{index}.png"
        cv2.imwrite(str(path), unit_to_uint8(lr)[:, :, ::-1])
        inputs.append(path)
    report = {"threads": torch.get_num_threads(), "crop": args.crop, "photos": [p.name for p in args.photos]}
    for family in args.families.split(","):
        classsr = load_weights(family, kind="classsr").model
        base = load_base_network(family)
        plain = PlainTiles(base, "cpu")
        engines = {"classsr": Upscaler(classsr, "cpu"), "base_engine": Upscaler(classsr, "cpu", branch=3)}
        reports: dict = {}
        rows = {"plain": _plain_row(plain)}
        rows.update({name: _engine_row(engine, name, reports) for name, engine in engines.items()})
        totals = {name: 0.0 for name in rows}
        engine_seconds = {name: 0.0 for name in engines}
        per_photo = []
        for row in rows.values():  # warm-up
            row(inputs[0], folder / "warm.png")
        for index, source in enumerate(inputs):
            fastest = {name: float("inf") for name in rows}
            fastest_engine = {name: float("inf") for name in engines}
            for _ in range(args.repeats):
                for name, row in rows.items():
                    started = time.perf_counter()
                    row(source, folder / f"out-{name}.png")
                    fastest[name] = min(fastest[name], time.perf_counter() - started)
                    if name in engines:
                        fastest_engine[name] = min(fastest_engine[name], reports[name].engine_seconds)
            for name in rows:
                totals[name] += fastest[name]
            for name in engines:
                engine_seconds[name] += fastest_engine[name]
            per_photo.append(
                {
                    "photo": args.photos[index].name,
                    "flops_ratio": round(reports["classsr"].flops_ratio, 3),
                    **{f"{name}_s": round(fastest[name], 3) for name in rows},
                    **{f"{name}_engine_s": round(fastest_engine[name], 3) for name in engines},
                    "classsr_over_plain": round(fastest["classsr"] / fastest["plain"], 3),
                }
            )
            print(json.dumps({"family": family, **per_photo[-1]}), flush=True)
        summary = {
            "seconds": {name: round(value, 3) for name, value in totals.items()},
            "engine_seconds": {name: round(value, 3) for name, value in engine_seconds.items()},
            "classsr_over_plain": round(totals["classsr"] / totals["plain"], 3),
            "base_engine_over_plain": round(totals["base_engine"] / totals["plain"], 3),
            "per_photo": per_photo,
        }
        print(
            json.dumps({"family": family, **{k: v for k, v in summary.items() if k != "per_photo"}}),
            flush=True,
        )
        report[family] = summary
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
