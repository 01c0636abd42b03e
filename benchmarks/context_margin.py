"""How much real context a piece needs: cells run alone with M LR pixels around them, against the whole image.

    python -m benchmarks.context_margin PHOTO [--families fsrcnn,carn] [--margins 0,2,4,6,8]

The shipped base network runs once on a 240x240 LR crop from the photo's centre (mirrored by 16 pixels,
32 for denoisers), then on every 28x28 cell of it alone, with M pixels of the crop around the cell (mirrored
at its edge); cells are stitched without blending. Prints the PSNR of the stitched result against the
whole-image run (how visible the cell grid is) and against the HR crop. The engine's CONTEXT comes from this.
For a denoiser (dncnn) the clean crop is the photo reduced by 4 and the input that crop with Gaussian noise
of sigma 25 (seeded); DnCNN's `engine_context` comes from this.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from classsr_cli.data.noise import noisy_image
from classsr_cli.engine.inference_graph import optimize_for_inference
from classsr_cli.imaging import read_image
from classsr_cli.imaging.bicubic import imresize
from classsr_cli.weights import load_weights

CELL, CROP = 28, 240


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a[16:-16, 16:-16] - b[16:-16, 16:-16]) ** 2))
    return 10 * np.log10(1 / mse) if mse > 0 else float("inf")


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photo", type=Path)
    parser.add_argument("--families", default="fsrcnn,carn")
    parser.add_argument("--margins", default="0,2,4,6,8")
    args = parser.parse_args()
    image = read_image(args.photo)[:, :, :3]
    top, left = (image.shape[0] - 4 * CROP) // 2, (image.shape[1] - 4 * CROP) // 2
    photo_crop = image[top : top + 4 * CROP, left : left + 4 * CROP].astype(np.float32)
    small = imresize(photo_crop, 0.25).clip(0, 1)
    cells = CROP // CELL
    for family in args.families.split(","):
        network = optimize_for_inference(load_weights(family, kind="base").model.eval())
        s = network.scale
        if s == 1:  # denoising: the reduced crop is the clean image, the input has noise
            hr = small
            lr = torch.from_numpy(noisy_image(np.round(small * 255), 25.0, seed=0)).permute(2, 0, 1)[None]
        else:
            hr, lr = photo_crop, torch.from_numpy(small).permute(2, 0, 1)[None].contiguous()
        size = s * CELL * cells
        pad = 16 if s > 1 else 32
        whole = network(F.pad(lr, (pad,) * 4, mode="reflect"))[:, :, s * pad : -s * pad, s * pad : -s * pad]
        whole = whole.clamp(0, 1)[0].permute(1, 2, 0).numpy()[:size, :size]
        for margin in (int(m) for m in args.margins.split(",")):
            padded = F.pad(lr, (margin,) * 4, mode="reflect") if margin else lr
            tiles = torch.stack(
                [
                    padded[
                        0, :, i * CELL : (i + 1) * CELL + 2 * margin, j * CELL : (j + 1) * CELL + 2 * margin
                    ]
                    for i in range(cells)
                    for j in range(cells)
                ]
            )
            out = network(tiles)[:, :, s * margin : s * (margin + CELL), s * margin : s * (margin + CELL)]
            out = out.clamp(0, 1).reshape(cells, cells, 3, s * CELL, s * CELL)
            stitched = out.permute(0, 3, 1, 4, 2).reshape(size, size, 3).numpy()
            row = {
                "family": family,
                "context": margin,
                "psnr_vs_whole_image": round(psnr(stitched, whole), 2),
                "psnr_vs_hr": round(psnr(stitched, hr[:size, :size]), 3),
                "whole_image_vs_hr": round(psnr(whole, hr[:size, :size]), 3),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
