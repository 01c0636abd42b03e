"""Does training through the back-projection step help? A fine-tune of a shipped network, both ways.

    python -m benchmarks.bp_training TRAIN_PHOTOS VAL_PHOTOS [--family fsrcnn] [--steps 1500]

`classsr upscale` back-projects every output (engine/backprojection.py), so a network's low frequencies
are replaced by the input's. Training can see the same: the L1 loss on back_project(net(lr), lr) instead of
on net(lr). Starting from the shipped base network, the same crops (same seed, batch 16, 48x48 LR, loss
away from a 2-pixel LR border where the resizes see the crop's edge) are used for both fine-tunes. Reports,
on central 1920x1080 crops of the validation photos, PSNR through the engine (back-projected, as users get
it) and without back-projection, and the shift of a flat saturated colour without back-projection.
"""

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.plain_peer import central_crop
from classsr_cli.engine import Upscaler
from classsr_cli.engine.backprojection import back_project
from classsr_cli.imaging import read_image
from classsr_cli.imaging.photos import list_photos
from classsr_cli.metrics import psnr
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.train.device_data import DevicePhotos
from classsr_cli.weights import load_weights


def fine_tune(network, photos: DevicePhotos, steps: int, through_back_projection: bool, seed: int = 0):
    network = copy.deepcopy(network).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)
    edge = 2 * 4  # HR pixels
    for _ in range(steps):
        lr, hr = photos.crops(photos.draw(16, generator))
        sr = network(lr)
        if through_back_projection:
            sr = back_project(sr, lr, 4)
        loss = (sr - hr)[:, :, edge:-edge, edge:-edge].abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return network.eval()


def flat_shift(network, color=(40, 90, 200)) -> float:
    """Largest per-channel mean shift (grey levels) of a flat colour, engine without back-projection."""
    lr = np.ones((60, 60, 3), np.float32) * np.array(color, np.float32) / 255
    sr, _ = Upscaler(network, "cpu", back_projection=False).upscale_array(lr)
    return float(np.abs(sr.reshape(-1, 3).mean(axis=0) * 255 - np.array(color)).max())


def evaluate(network, crops) -> dict:
    scores = {}
    for label, back_projection in (("psnr", True), ("psnr_no_back_projection", False)):
        engine = Upscaler(network, "cpu", back_projection=back_projection)
        scores[label] = round(
            float(
                np.mean([psnr(unit_to_uint8(engine.upscale_array(lr)[0]), hr, border=4) for hr, lr in crops])
            ),
            4,
        )
    scores["flat_shift"] = round(flat_shift(network), 3)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("train", type=Path)
    parser.add_argument("val", type=Path)
    parser.add_argument("--family", default="fsrcnn")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--photos", type=int, default=16, help="training photos to use (the first N)")
    args = parser.parse_args()
    torch.manual_seed(0)
    train = [unit_to_uint8(read_image(p)[:, :, :3]) for p in list_photos(args.train)[: args.photos]]
    photos = DevicePhotos(train, "cpu", scales=(1.0, 0.8, 0.6), patch=48)
    crops = [central_crop(p, 1920, 1080) for p in list_photos(args.val)]
    shipped = load_weights(args.family, kind="base").model
    report = {"family": args.family, "steps": args.steps, "shipped": evaluate(shipped, crops)}
    for label, through in (("plain_l1", False), ("l1_through_back_projection", True)):
        report[label] = evaluate(fine_tune(shipped, photos, args.steps, through), crops)
        print(json.dumps({label: report[label]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
