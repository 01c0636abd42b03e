"""PNG encoder settings: time and size of libvips' PNG writer at several zlib levels and row filters.

    python -m benchmarks.png_settings PHOTOS... [--crop 1920x1080] [--repeats 3]

Two kinds of 8-bit RGB picture per photo: its central crop (a photograph, `plain_peer.central_crop`) and
that crop's LR enlarged x4 by bicubic (as smooth as an upscaler's output). Each setting writes each picture
--repeats times; the fastest time counts, and the mean per picture is printed (seconds, MB), with OpenCV's
`imwrite` at its defaults beside them. The settings classsr writes with are `imaging/writer.py`'s
PNG_COMPRESSION and PNG_FILTER (docs/formats.md, "Encoder settings").
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyvips

from benchmarks.plain_peer import central_crop
from classsr_cli.imaging.bicubic import imresize
from classsr_cli.imaging.writer import PNG_COMPRESSION, PNG_FILTER
from classsr_cli.pixels import unit_to_uint8

SETTINGS = [(1, "none"), (1, "all"), (3, "none"), (3, "all"), (3, "up"), (3, "avg"), (3, "paeth"), (6, "all")]


def pictures(photos: list[Path], width: int, height: int) -> dict[str, list[np.ndarray]]:
    found: dict[str, list[np.ndarray]] = {"photo": [], "bicubic x4": []}
    for photo in photos:
        hr, lr = central_crop(photo, width, height)
        found["photo"].append(np.ascontiguousarray(hr[:, :, :3]))
        found["bicubic x4"].append(unit_to_uint8(imresize(lr, 4).clip(0, 1)))
    return found


def fastest(write, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        write()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--crop", default="1920x1080", help="HR crop WxH from each photo's centre")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.crop.split("x"))
    kinds = pictures(args.photos, width, height)
    out = Path(tempfile.mkdtemp()) / "out.png"
    rows = []
    for level, row_filter in [*SETTINGS, ("opencv", "default")]:
        row = {"encoder": "opencv" if level == "opencv" else "libvips", "level": level, "filter": row_filter}
        row["classsr"] = (level, row_filter) == (PNG_COMPRESSION, PNG_FILTER)
        for kind, images in kinds.items():
            seconds = size = 0.0
            for image in images:
                if level == "opencv":
                    bgr = np.ascontiguousarray(image[:, :, ::-1])
                    seconds += fastest(lambda bgr=bgr: cv2.imwrite(str(out), bgr), args.repeats)
                else:
                    vips = pyvips.Image.new_from_array(image).copy(interpretation="srgb")
                    seconds += fastest(
                        lambda vips=vips, level=level, row_filter=row_filter: vips.pngsave(
                            str(out), compression=level, filter=row_filter
                        ),
                        args.repeats,
                    )
                size += os.path.getsize(out)
            row[kind] = {"seconds": round(seconds / len(images), 3), "mb": round(size / len(images) / 1e6, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.unlink(missing_ok=True)
    out.parent.rmdir()


if __name__ == "__main__":
    main()
