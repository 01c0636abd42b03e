"""Does cleaner HR help? A fine-tune of a shipped network on the training photos as they are, or reduced.

    python -m benchmarks.clean_hr_training TRAIN_PHOTOS VAL_PHOTOS [--family carn] [--steps 1000]

The training photos are camera JPEGs, many visibly compressed. Reduced by 2 with the antialiased bicubic
(scales 0.5, 0.4, 0.3 of the photo instead of the paper's 1.0, 0.8, 0.6) they still hold DIV2K-sized images
with far less compression noise. Starting from the shipped base network, the same number of steps on each
(same seed, batch 16, 32x32 LR crops, plain L1, Adam at 1e-4), evaluated through the default engine on
central 1920x1080 crops of the validation photos, and of the validation photos reduced by 2 (clean HR).
"""

import argparse
import json
from pathlib import Path

import torch

from benchmarks.bp_training import fine_tune
from benchmarks.plain_peer import central_crop
from classsr_cli.engine import Upscaler
from classsr_cli.imaging import read_image
from classsr_cli.imaging.photos import list_photos
from classsr_cli.metrics import psnr
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.train.device_data import DevicePhotos
from classsr_cli.weights import load_weights


def score(network, crops) -> float:
    engine = Upscaler(network, "cpu")
    return round(
        sum(psnr(unit_to_uint8(engine.upscale_array(lr)[0]), hr, border=4) for hr, lr in crops) / len(crops),
        4,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("train", type=Path)
    parser.add_argument("val", type=Path)
    parser.add_argument("--family", default="carn")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--photos", type=int, default=16, help="training photos to use (the first N)")
    args = parser.parse_args()
    torch.manual_seed(0)
    train = [unit_to_uint8(read_image(p)[:, :, :3]) for p in list_photos(args.train)[: args.photos]]
    val = list_photos(args.val)
    sets = {
        "val": [central_crop(p, 1920, 1080) for p in val],
        "val_reduced_2x": [central_crop(p, 1920, 1080, reduce=2) for p in val],
    }
    shipped = load_weights(args.family, kind="base").model
    report = {
        "family": args.family,
        "steps": args.steps,
        "shipped": {k: score(shipped, c) for k, c in sets.items()},
    }
    for label, scales in (("photos_as_they_are", (1.0, 0.8, 0.6)), ("photos_reduced_2x", (0.5, 0.4, 0.3))):
        photos = DevicePhotos(train, "cpu", scales=scales, patch=32)
        tuned = fine_tune(shipped, photos, args.steps, through_back_projection=False)
        report[label] = {k: score(tuned, c) for k, c in sets.items()}
        print(json.dumps({label: report[label]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
