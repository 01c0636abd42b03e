"""ClassSR-DnCNN and DnCNN-O against OpenCV's non-local means, on the same noisy images (the paper's Table 5).

    python -m benchmarks.denoise_nlm DATASET [--noise-sigma 25] [--strengths 15,20,25,30,35] [--out F.json]
                                     [--weights CLASSSR.safetensors] [--base-weights DNCNN-O.safetensors]

DATASET is what `classsr bench` takes (a folder of clean images, or one with HR/). Every image gets the
noise `classsr bench --model dncnn` gives it (Gaussian, seeded by the image's name, rounded to 8 bits), so
the network rows here are exactly bench's. Non-local means (`cv2.fastNlMeansDenoisingColored`, 7x7
templates, 21x21 search) is given its best strength: h = hColor is swept over --strengths on a central
512x512 crop of every image, and the strength with the best mean PSNR there runs on the whole images.
PSNR on RGB over the whole image, 8-bit outputs; seconds per image on this machine.
Where no ClassSR-DnCNN weights are given or shipped, DnCNN-O runs alone (no ClassSR row).
"""

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from classsr_cli import bench as benchmark
from classsr_cli.engine import Upscaler
from classsr_cli.flops import count_params
from classsr_cli.metrics import psnr
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.weights import load_weights, shipped_entry

CROP = 512


def non_local_means(noisy: np.ndarray, strength: float) -> np.ndarray:
    """RGB uint8 -> RGB uint8 through OpenCV's colour non-local means (it expects BGR)."""
    bgr = cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, 7, 21)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def central(image: np.ndarray, size: int = CROP) -> np.ndarray:
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top : top + size, left : left + size]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset")
    parser.add_argument("--noise-sigma", type=float, default=25.0)
    parser.add_argument("--strengths", default="15,20,25,30,35")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--weights", help="ClassSR-DnCNN weights (default: the shipped ones)")
    parser.add_argument("--base-weights", help="DnCNN-O weights (default: the shipped ones)")
    args = parser.parse_args()
    protocol = benchmark.Protocol(scale=1, noise_sigma=args.noise_sigma)
    root, pairs = benchmark.find_pairs(args.dataset, protocol=protocol)
    images = []
    for pair in pairs:
        clean, noisy = benchmark.load_pair(pair, protocol)  # bench's noise, seeded by the image's name
        images.append((pair.name, clean, unit_to_uint8(noisy)))

    strengths = [float(s) for s in args.strengths.split(",")]
    sweep = {}
    for strength in strengths:
        scores = [
            psnr(non_local_means(central(noisy), strength), central(clean), border=0)
            for _, clean, noisy in images
        ]
        sweep[strength] = float(np.mean(scores))
        print(json.dumps({"nlm_strength": strength, "crop_psnr": round(sweep[strength], 4)}), flush=True)
    best = max(sweep, key=sweep.get)

    nlm = []
    for name, clean, noisy in images:
        started = time.perf_counter()
        out = non_local_means(noisy, best)
        seconds = time.perf_counter() - started
        nlm.append({"image": name, "psnr": psnr(out, clean, border=0), "seconds": seconds})

    if args.weights or shipped_entry("dncnn", "classsr") is not None:
        classsr = load_weights(args.weights or "dncnn", kind="classsr", family="dncnn").model
        base = benchmark.choose_base("dncnn", args.base_weights, classsr)
        rows = benchmark.build_contenders(classsr, "dncnn", base, device="cpu", protocol=protocol)
    else:
        network = load_weights(args.base_weights or "dncnn", kind="base", family="dncnn").model
        rows = [
            benchmark.Contender("DnCNN-O", "base", count_params(network), Upscaler(network, "cpu")),
            benchmark.Contender(protocol.reference_name, protocol.reference, 0),
        ]
    result = benchmark.run_bench(root, pairs, rows, "dncnn", protocol=protocol).as_json()
    table = [
        {
            "name": row["name"],
            "psnr": row["psnr"],
            "flops_ratio": row["flops_ratio"],
            "class_fractions": row["class_fractions"],
            "seconds": row["seconds"],
            "per_image": {entry["image"]: entry["psnr"] for entry in row["per_image"]},
        }
        for row in result["rows"]
    ]
    table.insert(
        len(table) - 1,  # before the noisy input
        {
            "name": f"OpenCV non-local means (h = hColor = {best:g})",
            "psnr": round(float(np.mean([entry["psnr"] for entry in nlm])), 4),
            "flops_ratio": None,
            "class_fractions": None,
            "seconds": round(float(np.mean([entry["seconds"] for entry in nlm])), 3),
            "per_image": {entry["image"]: round(entry["psnr"], 4) for entry in nlm},
        },
    )
    document = {
        "dataset": root.name,
        "images": len(pairs),
        "noise_sigma": args.noise_sigma,
        "nlm_sweep_on_central_crops": sweep,
        "nlm_best_strength": best,
        "rows": table,
    }
    for row in table:
        ratio = f"{row['flops_ratio']:.0%}" if row["flops_ratio"] is not None else "-"
        print(f"{row['name']:<40} {row['psnr']:8.3f} dB  FLOPs {ratio:>5}  {row['seconds']:.2f} s/image")
    if args.out:
        args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
