"""`classsr upscale` and `classsr denoise`: options in, `runs.restore` does the run, a summary out."""

from pathlib import Path

import typer
from rich.table import Table

from classsr_cli.cli.common import (
    BACK_PROJECTION_OPTION,
    DEBUG_OPTION,
    DEVICE_OPTION,
    EXIT_USER_ERROR,
    JSON_OPTION,
    MODEL_OPTION,
    PRECISION_OPTION,
    TILING_OPTION,
    command,
    console,
    errors_reported,
    print_error,
    print_json,
    print_note,
    progress_bars,
    say,
)
from classsr_cli.errors import OVERWRITE_HINT

DENOISE_MODEL_OPTION = typer.Option(None, "--model", "-m", help="dncnn (the default).")


def run_and_report(
    task: str,
    input: Path = typer.Argument(..., help="Image file, or a folder of images.", show_default=False),
    output: Path = typer.Argument(
        ..., help="Output file (type from its extension), or a folder.", show_default=False
    ),
    model: str = MODEL_OPTION,
    weights: str = typer.Option(
        None, "--weights", "-w", help="Weights file (.safetensors, or an official .pth)."
    ),
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    batch_size: int = typer.Option(
        None, "--batch-size", help="Tiles per network call (default: 16 CPU, 256 GPU)."
    ),
    branch: int = typer.Option(
        None, "--branch", help="Send every tile to branch K (1..M); M is the base network."
    ),
    flops_budget: float = typer.Option(
        None, "--flops-budget", help="Keep average FLOPs within F x the base (0<F<=1)."
    ),
    class_map: Path = typer.Option(None, "--class-map", help="Also write the image tinted by tile class."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    max_pixels: int = typer.Option(
        None, "--max-pixels", min=1, help="Refuse inputs of more pixels (default: 2^30, 32768 x 32768)."
    ),
    tiling: str = TILING_OPTION,
    back_projection: bool = BACK_PROJECTION_OPTION,
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """The body of `upscale` and `denoise`: the run (`runs.restore`) with progress bars, then its JSON or
    its summary (rank 0). A failed image (folder runs, --json) makes the exit code 2 once all are done."""
    from classsr_cli.api import EngineOptions
    from classsr_cli.engine.ranks import joined
    from classsr_cli.runs import RestoreRequest, restore

    request = RestoreRequest(
        task,
        source=input,
        target=output,
        class_map=class_map,
        overwrite=overwrite,
        max_pixels=max_pixels,
        engine=EngineOptions(batch_size, branch, flops_budget, tiling, back_projection),
        model=model,
        weights=weights,
        device=device,
        precision=precision,
        keep_going=as_json,  # a failed image is a result in the JSON document
    )
    # errors are reported before the ranks leave the group: torchrun stops the others when one exits
    with joined() as ranks, errors_reported(debug, as_json):
        result = restore(request, ranks, note=print_note, failed=print_error, progress=progress_bars)
        if ranks.is_main:
            if result.budget_unmet:
                say(
                    f"warning: a FLOPs budget of {flops_budget} is below the smallest branch plus the "
                    "Class-Module; every tile went to branch 1",
                    style="yellow",
                )
            if as_json:
                documents = result.documents()
                print_json(documents if result.plan.from_folder else documents[0])
            else:
                print_summary(result)
            for line in result.plan.skipped:
                say(f"note: skipped {line}", style="yellow")
            if result.plan.existing:
                print_note(existing_outputs_note(result.plan.existing))
            if result.plan.from_folder:
                say(folder_tally(result))
    if result.failures:  # on every rank, so that torchrun reports the launch as failed
        raise typer.Exit(EXIT_USER_ERROR)


upscale = command(
    run_and_report,
    """Upscale an image (or every image in a folder) x4 with ClassSR.

Started by torchrun, the processes share the folder's images (docs/multi-gpu.md).""",
    fixed={"task": "upscale"},
)
denoise = command(
    run_and_report,
    """Remove additive Gaussian noise from an image (or every image in a folder) with ClassSR-DnCNN.

A model removes noise of the sigma it was trained at (25 on the 0-255 scale by default; docs/denoise.md).

Same size out; bit depth, alpha and metadata kept as `upscale` keeps them.

Started by torchrun, the processes share the folder's images (docs/multi-gpu.md).""",
    fixed={"task": "denoise", "back_projection": None},  # back-projection is for upscaling
    options={"model": DENOISE_MODEL_OPTION},
)


def existing_outputs_note(jobs) -> str:
    """One line for the images of a folder run left alone because their output exists."""
    names = ", ".join(job.target.name for job in jobs[:3])
    if len(jobs) > 3:
        names += f" and {len(jobs) - 3} more"
    images = "image" if len(jobs) == 1 else "images"
    return f"left {len(jobs)} {images} alone, their output exists ({names}): {OVERWRITE_HINT} to replace them"


def folder_tally(result) -> str:
    """The closing line of a folder run: how many images were written, failed, left alone."""
    written = len(result.reports)
    parts = [f"{written} {'image' if written == 1 else 'images'} written"]
    if result.failures:
        parts.append(f"{len(result.failures)} failed")
    if result.plan.existing:
        parts.append(f"{len(result.plan.existing)} left alone")
    return ", ".join(parts)


def class_map_legend(num_classes: int) -> str:
    if num_classes == 3:
        return "green: simple, branch 1; yellow: medium, branch 2; red: hard, branch 3"
    return f"green: branch 1 (simplest) through yellow to red: branch {num_classes} (hardest)"


def print_summary(result) -> None:
    """Per image: tiles per class, sizes, speed, FLOPs and the class map's legend."""
    model, widths = result.restorer.description, result.restorer.widths
    for report in result.reports:
        # a line of its own: a table's title wraps at the (narrow) table's width
        say(f"{Path(report.output).name}: {model}, tiles per class")
        table = Table(show_header=True)
        table.add_column("class")
        table.add_column("width", justify="right")
        table.add_column("tiles", justify="right")
        table.add_column("share", justify="right")
        for index, count in enumerate(report.class_counts):
            share = count / report.tiles if report.tiles else 0.0
            table.add_row(f"branch {index + 1}", str(widths[index]), f"{count:,}", f"{share:.1%}")
        console.print(table)
        speed = report.out_width * report.out_height / 1e6 / max(report.seconds, 1e-9)
        # short lines of their own: one long line broke mid-phrase in an 80-column terminal
        lines = [
            f"{report.width}x{report.height} -> {report.out_width}x{report.out_height} in "
            f"{report.seconds:.1f} s ({speed:.2f} output MP/s on {report.device})",
            f"engine: {report.engine_seconds:.1f} s of it (the rest: reading and writing)",
            f"FLOPs, the paper's count: {report.flops_ratio:.1%} of the base network's per sub-image",
            f"executed, context included: {report.executed_ratio:.0%} of the base network's arithmetic",
        ]
        if report.class_map:
            legend = class_map_legend(len(report.class_counts))
            lines.append(f"class map: {report.class_map} ({legend})")
        for line in lines:
            say(line)
    if result.reports:
        say(f"model loaded in {result.load_seconds:.1f} s, before the first image")
