"""`classsr prepare-data` and `classsr make-testsets`: options in, `classsr_cli.data` does the work."""

from pathlib import Path

import typer

from classsr_cli.cli.common import DEBUG_OPTION, JSON_OPTION, console, print_json, say, user_errors
from classsr_cli.data import prepare, testsets


@user_errors
def prepare_data(
    src: Path = typer.Argument(..., help="Folder of training photos.", show_default=False),
    out: Path = typer.Argument(..., help="Output folder (resumes a run there).", show_default=False),
    scales: str = typer.Option("1.0,0.9,0.8,0.7,0.6", "--scales", help="Factors photos are shrunk by."),
    task: str = typer.Option("upscale", "--task", help="upscale (x4 SR data) or denoise (Gaussian noise)."),
    noise_sigma: float = typer.Option(
        prepare.DEFAULT_NOISE_SIGMA,
        "--noise-sigma",
        help="Denoise: noise sigma on the 0-255 scale (added on the fly in training).",
    ),
    scale: int = typer.Option(None, "--scale", help="SR scale: LR = HR reduced by it (4; denoise: 1)."),
    patch: int = typer.Option(32, "--patch", help="LR sub-image size."),
    stride: int = typer.Option(16, "--stride", help="LR sub-image stride."),
    classes: int = typer.Option(3, "--classes", help="Number of classes M (equal thirds for 3)."),
    rank_model: str = typer.Option(
        None,
        "--rank-model",
        help="bicubic (denoise: blur), a family or a weights FILE (default: best shipped, else bicubic).",
    ),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of photos held out."),
    workers: int = typer.Option(None, "--workers", help="Processes (default: min(4, CPU cores))."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation choice."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Prepare again a folder holding a set made with other settings."
    ),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Make training data: scaled HR/LR images and sub-images ranked by difficulty into classes."""
    summary = prepare.prepare_data(
        src,
        out,
        prepare.parse_scales(scales),
        scale,
        patch,
        stride,
        classes,
        rank_model,
        val_fraction,
        workers,
        seed,
        log=say,
        task=task,
        noise_sigma=noise_sigma,
        overwrite=overwrite,
    )
    if as_json:
        print_json(summary)
        return
    thresholds = ", ".join(f"{t:.2f}" for t in summary["psnr_thresholds"]) or "-"
    console.print(
        f"{summary['images']} photos ({summary['val_images']} held out), {summary['subimages']:,} sub-images "
        f"({summary['train_subimages']:,} train) in {summary['seconds']:.1f} s -> {summary['out']}"
    )
    console.print(
        f"classes (train): {summary['class_counts']}, PSNR thresholds {thresholds} dB, "
        f"ranked by {summary['rank_model']}"
    )
    if summary["skipped"]:
        console.print(f"skipped {len(summary['skipped'])}: {', '.join(summary['skipped'])}", style="yellow")


@user_errors
def make_testsets(
    src: Path = typer.Argument(..., help="Folder of photos, or DIV8K.", show_default=False),
    out: Path = typer.Argument(..., help="Output: <set>/HR, <set>/LR.", show_default=False),
    sizes: str = typer.Option("2k,4k,full", "--sizes", help="Sets by long side: 2k, 4k, 8k, full or pixels."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Make again pairs older than their photo; remove images of other photos."
    ),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Build HR/LR test sets (the paper's Test2K/4K/8K from DIV8K, or sets of given sizes from any photos)."""
    summary = testsets.make_testsets(src, out, testsets.parse_sizes(sizes), log=say, overwrite=overwrite)
    if as_json:
        print_json(summary)
        return
    for name, entry in summary["sets"].items():
        note = f", {len(entry['too_small'])} too small (left out)" if entry["too_small"] else ""
        console.print(f"{name}: {entry['images']} images{note} -> {Path(entry['hr']).parent}")
    if summary["skipped"]:
        console.print(f"skipped (unreadable): {', '.join(summary['skipped'])}", style="yellow")
