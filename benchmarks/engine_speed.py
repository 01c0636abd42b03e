"""Wall time of the engine: batched against one tile at a time, and ClassSR against its base network.

    python benchmarks/engine_speed.py --families fsrcnn,carn,srresnet [--image photo.png] [--json]

For each family, on the same LR image: ClassSR routed by its Class-Module (or by --flops-budget), the base
network on every tile (`--branch M`, the baseline), and the official code's way, one network call per tile
(`--batch-size 1`). Reports seconds (median of --repeats runs after a warm-up), the FLOPs ratio of the
routing that happened, and time ratio / FLOPs ratio (1.0 = the saving in FLOPs is a saving in time).
"""

import argparse
import json
import statistics
import time

import torch

from benchmarks.common import SAMPLE, classsr_model, sample_lr
from classsr_cli.engine import Upscaler


def timed(engine: Upscaler, lr, repeats: int) -> tuple[float, object]:
    engine.upscale_array(lr[:64, :64])  # warm-up: first-call allocations and kernel selection
    times, tally = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        _, tally = engine.upscale_array(lr)
        times.append(time.perf_counter() - start)
    return statistics.median(times), tally


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="fsrcnn,carn,srresnet")
    parser.add_argument("--image", default=str(SAMPLE))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--flops-budget", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow one-tile-at-a-time run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    lr = sample_lr(args.image)
    results = []
    for family in args.families.split(","):
        model, weights = classsr_model(family)
        classsr = Upscaler(model, args.device, batch_size=args.batch_size, flops_budget=args.flops_budget)
        base = Upscaler(model, args.device, batch_size=args.batch_size, branch=model.num_classes)
        classsr_s, tally = timed(classsr, lr, args.repeats)
        base_s, _ = timed(base, lr, args.repeats)
        flops_ratio = tally.flops_ratio(classsr.plan)
        row = {
            "family": family,
            "weights": weights,
            "image": f"{lr.shape[1]}x{lr.shape[0]}",
            "tiles": tally.tiles,
            "class_counts": tally.class_counts,
            "device": str(classsr.device),
            "threads": torch.get_num_threads(),
            "batch_size": classsr.runner.batch_size,
            "classsr_s": round(classsr_s, 3),
            "base_s": round(base_s, 3),
            "flops_ratio": round(flops_ratio, 4),
            "time_ratio": round(classsr_s / base_s, 4),
            "time_over_flops": round(classsr_s / base_s / flops_ratio, 3),
        }
        if not args.skip_loop:
            loop = Upscaler(model, args.device, batch_size=1, flops_budget=args.flops_budget)
            loop_s, _ = timed(loop, lr, 1)
            row["one_tile_loop_s"] = round(loop_s, 3)
            row["batched_speedup"] = round(loop_s / classsr_s, 2)
        results.append(row)
        if not args.json:
            print(json.dumps(row), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
