"""Held-out PSNR against training iterations: the curves behind the README's training-length figures.

    python benchmarks/training_curves.py runs/fsrcnn-o runs/carn-o --plot curves.png

Each RUN is a training run's folder (its <stage>.jsonl, base by default) or a .jsonl file. Prints a markdown
table of the "val" records (PSNR on the held-out training photos, by iteration) and, with --plot, draws it.
"""

import argparse
import json
from pathlib import Path


def read_validation(source: Path, stage: str) -> dict[int, float]:
    """{iteration: held-out PSNR} of one run; a resumed run's later record of an iteration wins."""
    log = source / f"{stage}.jsonl" if source.is_dir() else source
    if not log.is_file():
        raise SystemExit(f"no training log at {log}")
    curve = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "val":
            curve[int(record["iter"])] = float(record["psnr"])
    return curve


def markdown_table(curves: dict[str, dict[int, float]]) -> str:
    names = list(curves)
    iterations = sorted({i for curve in curves.values() for i in curve})
    lines = ["| iteration | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i in iterations:
        cells = [f"{curves[name][i]:.2f}" if i in curves[name] else "" for name in names]
        lines.append(f"| {i:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, dict[int, float]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for name, curve in curves.items():
        points = sorted(curve.items())
        axes.plot([i / 1000 for i, _ in points], [p for _, p in points], marker="o", label=name)
    axes.set_xlabel("training iterations (thousands)")
    axes.set_ylabel("held-out PSNR (dB)")
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or .jsonl files")
    parser.add_argument("--stage", default="base", help="the stage log to read in a run folder")
    parser.add_argument("--plot", type=Path, help="also draw the curves into this PNG")
    args = parser.parse_args()
    curves = {}
    for run in args.runs:
        name = run.stem if run.suffix == ".jsonl" else run.name
        curves[name] = read_validation(run, args.stage)
    print(markdown_table(curves))
    if args.plot:
        plot(curves, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
