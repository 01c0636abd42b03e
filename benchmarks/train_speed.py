"""Seconds per training iteration of each stage, per family, with the training loop's own step.

    python benchmarks/train_speed.py --families fsrcnn,carn
    python benchmarks/train_speed.py --families srresnet,rcan --iters 2 --batch-scale 0.125

Stage 1 trains each branch alone (batch 16), stage 2 the Class-Module behind frozen branches and stage 3
everything (batch 96). Batches are random tensors: this times the arithmetic, not the data loading, which
runs in loader processes during real training. With --batch-scale below 1 the batches shrink by that factor
and the times are scaled back up (compute grows linearly with the batch once it fills the cores); the report
says so.
"""

import argparse
import json
import statistics
import time

import torch

from classsr_cli.models import create, create_base, get_family
from classsr_cli.train.loop import training_autocast, training_step
from classsr_cli.train.losses import LossWeights


def seconds_per_iteration(
    net,
    parameters,
    batch: int,
    classify: bool,
    iters: int,
    warmup: int,
    device,
    precision: str = "auto",
    weights: LossWeights = LossWeights(),
) -> float:
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    # the training loop's layout: channels-last model and inputs
    low_res = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    scale = getattr(net, "scale", 4)  # 1: a denoiser, whose target is the input's size
    high_res = torch.rand(batch, 3, 32 * scale, 32 * scale, device=device)
    autocast = training_autocast(precision, device)
    times = []
    for step in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        training_step(net, optimizer, low_res, high_res, classify, weights, autocast=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_family(family: str, args, device) -> list[dict]:
    rows = []
    widths = get_family(family).widths_for(3)
    small = max(1, round(args.stage1_batch * args.batch_scale))
    for width in widths if 1 in args.stages else []:
        net = create_base(family, width).to(device, memory_format=torch.channels_last).train()
        seconds = seconds_per_iteration(
            net, list(net.parameters()), small, False, args.iters, args.warmup, device, args.precision
        )
        rows.append(
            {
                "family": family,
                "stage": 1,
                "width": width,
                "batch": args.stage1_batch,
                "measured_batch": small,
                "seconds": seconds * args.stage1_batch / small,
            }
        )
    big = max(1, round(args.stage23_batch * args.batch_scale))
    for stage in [stage for stage in (2, 3) if stage in args.stages]:
        model = create(family, widths).to(device, memory_format=torch.channels_last).train()
        if stage == 2:
            for branch in model.branches:
                branch.requires_grad_(False)
                branch.eval()
        for module in model.modules():  # stage 3 keeps BatchNorm statistics, as the training loop does
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        parameters = [p for p in model.parameters() if p.requires_grad]
        # stage 2 with --w-image 0 (the Class-Module on the prepared classes alone) runs no branches
        weights = LossWeights(image=args.w_image) if stage == 2 else LossWeights()
        seconds = seconds_per_iteration(
            model, parameters, big, True, args.iters, args.warmup, device, args.precision, weights
        )
        rows.append(
            {
                "family": family,
                "stage": stage,
                "width": "/".join(map(str, widths)),
                "batch": args.stage23_batch,
                "measured_batch": big,
                "seconds": seconds * args.stage23_batch / big,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="fsrcnn,carn")
    parser.add_argument("--stages", default="1,2,3", type=lambda text: {int(s) for s in text.split(",")})
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--stage1-batch", type=int, default=16)
    parser.add_argument("--stage23-batch", type=int, default=96)
    parser.add_argument("--batch-scale", type=float, default=1.0, help="measure on batches this much smaller")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on a GPU), fp32 or bf16")
    parser.add_argument("--w-image", type=float, default=2000.0, help="stage 2's Image-Loss weight")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = [
        row for family in args.families.split(",") for row in measure_family(family.strip(), args, device)
    ]
    if args.json:
        document = {"device": str(device), "threads": torch.get_num_threads(), "precision": args.precision}
        print(json.dumps({**document, "rows": rows}, indent=2))
        return
    print(f"device {device}, {torch.get_num_threads()} threads, precision {args.precision},", end=" ")
    print(f"median of {args.iters} iterations")
    print(f"{'family':<9} {'stage':>5} {'width':>10} {'batch':>5} {'s/iter':>9} {'iter/s':>8}  measured at")
    for row in rows:
        note = "" if row["measured_batch"] == row["batch"] else f"batch {row['measured_batch']}, scaled"
        print(
            f"{row['family']:<9} {row['stage']:>5} {row['width']:>10} {row['batch']:>5} "
            f"{row['seconds']:>9.3f} {1 / row['seconds']:>8.2f}  {note}"
        )


if __name__ == "__main__":
    main()
