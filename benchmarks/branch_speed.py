"""Speed per executed FLOP of each branch of the shipped ClassSR models, on one batch of pieces.

    python -m benchmarks.branch_speed [--families fsrcnn,carn] [--batch 8x120x232] [--repeats 5]

Each branch, prepared for inference as the engine prepares it (`optimize_for_inference`), runs the same
channels-last fp32 batch of LR pieces; the fastest of --repeats runs after a warm-up counts. Prints seconds
and executed FLOPs per second (the project's executed count, `flops.py`, per LR pixel): where a narrow
branch runs at fewer FLOPs per second than the widest, ClassSR saves less time than it saves FLOPs.
"""

import argparse
import json
import time

import torch

from classsr_cli.engine.inference_graph import optimize_for_inference
from classsr_cli.engine.routing import plan_for
from classsr_cli.weights import load_weights


def branch_speeds(family: str, batch: tuple[int, int, int], repeats: int) -> list[dict]:
    model = load_weights(family, kind="classsr").model
    plan = plan_for(model)
    count, height, width = batch
    pieces = torch.rand(count, 3, height, width).contiguous(memory_format=torch.channels_last)
    rows = []
    for index, branch in enumerate(model.branches):
        branch = optimize_for_inference(branch).eval()
        with torch.inference_mode():
            branch(pieces)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                branch(pieces)
                best = min(best, time.perf_counter() - start)
        executed = plan.branch_executed[index] * count * height * width / 1024  # per 32x32 sub-image
        rows.append(
            {
                "family": family,
                "branch": index + 1,
                "seconds": round(best, 4),
                "gflops_per_second": round(executed / best / 1e9, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="fsrcnn,carn")
    parser.add_argument("--batch", default="8x120x232", help="pieces x LR height x LR width")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch = tuple(int(value) for value in args.batch.lower().split("x"))
    print(json.dumps({"threads": torch.get_num_threads(), "batch": args.batch}), flush=True)
    for family in args.families.split(","):
        for row in branch_speeds(family, batch, args.repeats):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
