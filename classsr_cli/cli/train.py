"""`classsr train`: the paper's three stages (branches, classifier, joint), and assemble, calibrate, relabel
and slimmable training. The commands parse options; `classsr_cli.train` trains."""

import json
from pathlib import Path

import typer

from classsr_cli.cli.common import (
    DEBUG_OPTION,
    JSON_OPTION,
    CleanHelp,
    command,
    console,
    group,
    parse_widths,
    print_json,
    progress_bars,
    say,
    subcommand,
)

app = group("Train ClassSR in the paper's three stages: branches, classifier, joint.")

# unset options (None) come from the checkpoint on --resume, else from the stage's paper defaults
TRAIN_DATA = typer.Option(..., "--data", help="Folder made by `classsr prepare-data`.", show_default=False)
TRAIN_OUT = typer.Option(..., "--out", help="Run folder: weights, checkpoints and logs.", show_default=False)
TRAIN_MODEL = typer.Option(None, "--model", "-m", help="Family: fsrcnn, carn, srresnet, rcan or dncnn.")
TRAIN_INIT = typer.Option(None, "--init", help="Starting weights (RUN/stage1, RUN/stage2.safetensors).")
TRAIN_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (torchrun: one GPU each).")


def _report_training(summary: dict, as_json: bool) -> None:
    from classsr_cli.engine.ranks import from_environment

    if not from_environment().is_main:  # under torchrun only rank 0 reports
        return
    if as_json:
        print_json(summary)
        return
    psnr = f"{summary['val_psnr']:.3f} dB" if summary.get("val_psnr") is not None else "not measured"
    fractions = summary.get("class_fractions")
    classes = ("  classes " + "/".join(f"{share:.0%}" for share in fractions)) if fractions else ""
    say(
        f"{summary['stage']}: {summary['iters']} iterations, val PSNR {psnr}{classes} -> {summary['weights']}"
    )


def train_stage(
    stage: str,
    data: Path = TRAIN_DATA,
    out: Path = TRAIN_OUT,
    model: str = TRAIN_MODEL,
    branch: int = typer.Option(None, "--branch", help="Only branch K (1 = simple), e.g. one per process."),
    all_data: bool = typer.Option(False, "--all-data", help="Train the base network on all data: RUN/base."),
    init: Path = typer.Option(
        None,
        "--init",
        help="Start from a trained network of the same width, or (DnCNN) a wider one, narrowed "
        "(with --branch K or --all-data).",
    ),
    iters: int = typer.Option(None, "--iters", min=1, help="Iterations (stage 1: 500k, stages 2-3: 200k)."),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, help="Batch over all processes (16; stages 2-3: 96)."
    ),
    lr: float = typer.Option(
        None, "--lr", help="Initial learning rate, cosine to 1e-7 (1e-3, DnCNN 1e-4; stages 2-3: 2e-4)."
    ),
    w_image: float = typer.Option(None, "--w-image", min=0.0, help="Weight w1 of the L1 Image-Loss (2000)."),
    w_classes: float = typer.Option(None, "--w-class", min=0.0, help="Weight w2 of the Class-Loss (1)."),
    w_average: float = typer.Option(
        None,
        "--w-average",
        min=0.0,
        help="Weight w3 of the Average-Loss (6): raise it if one branch takes all.",
    ),
    w_labels: float = typer.Option(
        None, "--w-label", min=0.0, help="Cross-entropy towards the data's classes (0; not in the paper)."
    ),
    w_cost: float = typer.Option(
        None,
        "--w-cost",
        min=0.0,
        help="Expected routing cost under the branches' own errors, from data that `train relabel` "
        "wrote (0; not in the paper).",
    ),
    widths: str = typer.Option(
        None, "--widths", help="Branch widths simple->hard, e.g. 16,36,56 (the paper's)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/<stage>.ckpt and its iteration."),
    device: str = TRAIN_DEVICE,
    seed: int = typer.Option(None, "--seed", help="Seed of weights, data order and augmentation (0)."),
    val_every: int = typer.Option(
        None, "--val-every", min=0, help="Validate every K iterations (5000; 0: end)."
    ),
    val_crop: int = typer.Option(None, "--val-crop", min=0, help="Validate on central NxN LR crops (192)."),
    checkpoint_minutes: float = typer.Option(
        None, "--checkpoint-minutes", min=0.0, help="Save every M minutes (5)."
    ),
    workers: int = typer.Option(None, "--workers", min=0, help="Data loader processes (by device)."),
    log_every: int = typer.Option(None, "--log-every", min=1, help="Log to RUN/<stage>.jsonl every K (100)."),
    channels_last: bool = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC layout (on)."),
    precision: str = typer.Option(
        None, "--precision", help="Forward pass: auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16."
    ),
    noise_sigma: float = typer.Option(
        None, "--noise-sigma", min=0.0, help="Denoising data: Gaussian noise sigma, 0-255 (the data's, 25)."
    ),
    clean_fraction: float = typer.Option(
        None,
        "--clean-fraction",
        min=0.0,
        max=1.0,
        help="Denoising: this share of each batch trained without noise, input = target (0).",
    ),
    smooth_fraction: float = typer.Option(
        None,
        "--smooth-fraction",
        min=0.0,
        max=1.0,
        help="Share of each batch from synthetic smooth colour fields: smooth gradients then come back "
        "without a faint 4-pixel pattern (default 0).",
    ),
    zero_mean_filters: bool = typer.Option(
        None,
        "--zero-mean-filters/--paper-filters",
        help="Keep the Class-Module's first-layer kernels zero-mean: it routes by detail, not brightness "
        "(off: the paper's).",
    ),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """The body of `train branches`, `train classifier` and `train joint`: one stage, then its summary.
    Settings left unset (None) come from the checkpoint on --resume, else from the stage's defaults."""
    from classsr_cli import train

    settings = {
        "iters": iters,
        "batch_size": batch_size,
        "lr": lr,
        "w_image": w_image,
        "w_classes": w_classes,
        "w_average": w_average,
        "w_labels": w_labels,
        "w_cost": w_cost,
        "seed": seed,
        "val_every": val_every,
        "val_crop": val_crop,
        "checkpoint_minutes": checkpoint_minutes,
        "workers": workers,
        "log_every": log_every,
        "channels_last": channels_last,
        "precision": precision,
        "noise_sigma": noise_sigma,
        "clean_fraction": clean_fraction,
        "smooth_fraction": smooth_fraction,
        "zero_mean_filters": zero_mean_filters,
    }
    # the settings a command does not take are None here, as if not given
    options = {name: value for name, value in settings.items() if value is not None}
    request = train.TrainRequest(data, out, model, init, resume, device, parse_widths(widths), options)
    if stage == "branches":
        summary = train.train_branches(request, branch=branch, all_data=all_data, console=console)
    else:
        run = train.train_classifier if stage == "classifier" else train.train_joint
        summary = run(request, console=console)
    _report_training(summary, as_json)


# stage 1 trains single networks: no loss weights; stages 2 and 3 train ClassSR: no stage-1 choices
SINGLE_NETWORKS = {
    "w_image": None,
    "w_classes": None,
    "w_average": None,
    "w_labels": None,
    "w_cost": None,
    "zero_mean_filters": None,
}
CLASSSR = {"branch": None, "all_data": False, "clean_fraction": None, "smooth_fraction": None}
branches = command(
    train_stage,
    "Stage 1: each branch on its class of sub-images (L1), then RUN/stage1.safetensors.",
    fixed={"stage": "branches", **SINGLE_NETWORKS},
)
app.command("branches", cls=CleanHelp)(branches)
classifier = command(
    train_stage,
    "Stage 2: the Class-Module, branches frozen -> RUN/stage2.safetensors.",
    fixed={"stage": "classifier", **CLASSSR},
    options={"init": TRAIN_INIT},
)
joint = command(
    train_stage,
    "Stage 3: everything fine-tuned together -> RUN/final.safetensors.",
    fixed={"stage": "joint", **CLASSSR},
    options={"init": TRAIN_INIT},
)


@subcommand(app, "assemble")
def train_assemble_command(
    networks: list[Path] = typer.Argument(
        ...,
        help="Trained single networks, simple -> hard (2 to 5), one slimmable run's ledger folder, or one "
        "ClassSR model (its branches, for a new Class-Module).",
    ),
    out: Path = TRAIN_OUT,
    model: str = TRAIN_MODEL,
    seed: int = typer.Option(0, "--seed", help="Seed of the fresh Class-Module."),
    classifier: Path = typer.Option(
        None,
        "--classifier",
        help="Take the Class-Module from this ClassSR model, of any family, instead of a fresh one.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing RUN/stage1.safetensors."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Stage 1 from networks trained elsewhere (e.g. on all data, or a ledger) -> RUN/stage1.safetensors.

    --model may be left out for a ledger (its own family)."""
    from classsr_cli.train import assemble_networks
    from classsr_cli.weights import read_metadata

    written = assemble_networks(
        networks, out, model, seed=seed, classifier_from=classifier, overwrite=overwrite
    )
    step = read_metadata(written).get("iterations")
    routing = str(classifier) if classifier else "fresh (untrained: `train classifier`, or --classifier)"
    if as_json:
        print_json(
            {
                "stage": "stage1",
                "weights": str(written),
                "from": [str(n) for n in networks],
                "ledger_step": int(step) if step else None,
                "class_module": str(classifier) if classifier else "fresh",
            }
        )
        return
    if step:
        source = f"the ledger {networks[0]} at step {step}"
    else:
        source = f"the branches of {networks[0]}" if len(networks) == 1 else f"{len(networks)} networks"
    say(f"stage 1 assembled from {source}, Class-Module {routing} -> {written}")


@subcommand(app, "average")
def train_average_command(
    snapshots: list[Path] = typer.Argument(
        ..., help="Two or more weights files of one network, e.g. a ledger's weights at several commits."
    ),
    out: Path = typer.Option(..., "--out", help="Weights file to write (fp32).", show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """The mean of several snapshots of one network (snapshot averaging) -> OUT.

    Keeps the last one's metadata, so `train assemble DIR` reads DIR/weights.safetensors as a ledger."""
    from classsr_cli.train import average_snapshots
    from classsr_cli.weights import read_metadata

    written = average_snapshots(snapshots, out, overwrite=overwrite)
    steps = json.loads(read_metadata(written)["averaged"])
    if as_json:
        print_json({"weights": str(written), "from": [str(path) for path in snapshots], "steps": steps})
        return
    say(f"{len(snapshots)} snapshots averaged (iterations {', '.join(map(str, steps))}) -> {written}")


@subcommand(app, "calibrate")
def train_calibrate_command(
    weights: Path = typer.Argument(
        ..., help="ClassSR weights after stage 2 or 3, e.g. RUN/stage2.safetensors."
    ),
    data: Path = TRAIN_DATA,
    out: Path = typer.Option(..., "--out", help="Calibrated weights file to write.", show_default=False),
    flops_ratio: float = typer.Option(
        None,
        "--flops-ratio",
        help="FLOPs to spend, as a share of the base's (0.7 unless --shift or --tolerance).",
    ),
    shift: float = typer.Option(
        None, "--shift", help="Shift by this much per class instead (one chosen on a PSNR-FLOPs curve)."
    ),
    tolerance: float = typer.Option(
        None,
        "--tolerance",
        min=0.0,
        help="Instead: the cheapest shift keeping every photo of DATA (both splits; a folder written by "
        "`train relabel`) within this many dB of the hardest branch, on average.",
    ),
    crop: int = typer.Option(
        0, "--val-crop", min=0, help="Only central NxN LR crops of the held-out photos."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Shift routing between the classes: until the held-out photos cost --flops-ratio of the base, by
    --shift, or to the cheapest routing within --tolerance dB of the hardest branch."""
    from classsr_cli.train.calibration import calibrate_file

    summary = calibrate_file(
        weights, data, out, flops_ratio, crop, overwrite=overwrite, shift=shift, tolerance=tolerance
    )
    if as_json:
        print_json(summary)
        return
    held = ""
    if tolerance is not None:
        held = (
            f" ({summary['subimage_psnr_drop']:.3f} dB below the hardest branch at "
            f"{summary['subimage_flops_ratio']:.1%} of the FLOPs on the sub-images of "
            f"{summary['subimage_photos']} photos, both splits)"
        )
    say(
        f"routing shifted by {summary['shift']} per class{held}; on {summary['tiles']} tiles of the held-out "
        f"photos: FLOPs {summary['flops_ratio_before']:.1%} -> {summary['flops_ratio_after']:.1%} of the "
        f"base -> {out}"
    )


@subcommand(app, "relabel")
def train_relabel_command(
    weights: Path = typer.Argument(..., help="ClassSR weights whose branches are trained (stage 1)."),
    data: Path = TRAIN_DATA,
    out: Path = typer.Option(
        ..., "--out", help="New prepared folder (shares DATA's images).", show_default=False
    ),
    flops_ratio: float = typer.Option(
        0.6, "--flops-ratio", help="FLOPs the labels spend, as a share of the base's."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    engine: bool = typer.Option(
        False,
        "--engine",
        help="Measure the branches through the engine on whole images (real context, back-projection).",
    ),
    scales: str = typer.Option(
        None, "--scales", help="Only the sub-images of these prepared scales, e.g. 1.0 (a shorter pass)."
    ),
    errors_from: Path = typer.Option(
        None,
        "--errors-from",
        help="An earlier relabelled folder of the same data and weights: reuse its errors.",
    ),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Class each sub-image by what the trained branches do on it: the cheapest trade of error and FLOPs."""
    from classsr_cli.train.relabel import relabel

    with progress_bars(disable=as_json) as progress:
        task = progress.add_task("running the branches", total=None)
        summary = relabel(
            weights,
            data,
            out,
            flops_ratio,
            device,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            engine=engine,
            scales=[float(v) for v in scales.split(",")] if scales else None,
            errors_from=errors_from,
        )
    if as_json:
        print_json(summary)
        return
    say(
        f"labels at {summary['flops_ratio']:.1%} of the base's FLOPs, classes {summary['class_counts']} "
        f"(held out {summary['val_class_counts']}) -> {out}"
    )


@subcommand(app, "slimmable")
def train_slimmable_command(
    ledger: Path = typer.Argument(
        ..., help="Ledger folder: weights.safetensors and curve.jsonl, continued if it exists."
    ),
    data: Path = TRAIN_DATA,
    val: Path = typer.Option(
        ..., "--val", help="Folder of validation photos (central crops are scored).", show_default=False
    ),
    model: str = typer.Option("srresnet", "--model", "-m", help="Family: srresnet or rcan."),
    widths: str = typer.Option(None, "--widths", help="Widths, e.g. 36,52,64 (the paper's)."),
    iters: int = typer.Option(40000, "--iters", min=1, help="Planned steps: the cosine schedule's length."),
    stop_at: int = typer.Option(None, "--stop-at", min=1, help="Stop (and save) after step N."),
    lr: float = typer.Option(4e-4, "--lr", help="Peak learning rate (new ledgers only)."),
    reference: str = typer.Option(
        "carn", "--reference", help="Shipped base network scored on the same crops once ('' for none)."
    ),
    device: str = TRAIN_DEVICE,
    debug: bool = DEBUG_OPTION,
):
    """Train every branch width of SRResNet or RCAN in one slimmable run, resumable from a ledger."""
    from classsr_cli.train.slimmable import slimmable_run

    state = slimmable_run(
        ledger, data, val, model, parse_widths(widths), iters, stop_at, lr, reference, device, say
    )
    hours = state["seconds"] / 3600
    say(f"{state['family']} at step {state['iteration']} ({hours:.2f} h of training) -> {ledger}")


# listed last, after the other commands, as --help has always listed them
app.command("classifier", cls=CleanHelp)(classifier)
app.command("joint", cls=CleanHelp)(joint)
