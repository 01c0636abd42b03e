"""`classsr bench` and `classsr flops`: measurements of models; `classsr_cli.bench` and `classsr_cli.flops`
measure, these commands parse and print."""

from pathlib import Path

import typer
from rich.table import Table

from classsr_cli.cli.common import (
    ANY_MODEL_OPTION,
    BACK_PROJECTION_OPTION,
    DEBUG_OPTION,
    JSON_OPTION,
    TILING_OPTION,
    console,
    parse_widths,
    print_json,
    print_note,
    progress_bars,
    say,
    table_console,
    user_errors,
)


@user_errors
def flops(
    model: str = typer.Option(
        "fsrcnn", "--model", "-m", help="Family: fsrcnn, carn, srresnet, rcan or dncnn (denoising)."
    ),
    classes: int = typer.Option(None, "--classes", help="Number of classes M (2-5); default 3."),
    widths: str = typer.Option(None, "--widths", help="Branch widths simple->hard, e.g. 16,36,56."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """FLOPs and parameters per 32x32 sub-image (x4; dncnn: same size), as the paper counts and as run."""
    from classsr_cli.bench import family_title
    from classsr_cli.flops import family_costs

    costs = family_costs(model, parse_widths(widths), classes)
    if as_json:
        print_json(costs)
        return
    task = f"x{costs['scale']}" if costs["scale"] > 1 else "denoising"
    title = family_title(costs["model"])
    table = Table(title=f"ClassSR-{title}, {task}, per {costs['patch']}x{costs['patch']} sub-image")
    for column in ("module", "width", "params", "FLOPs (paper)", "FLOPs (executed)", "of base"):
        table.add_column(column, justify="right" if column != "module" else "left")
    base = costs["branches"][-1]["flops"]
    table.add_row(
        "Class-Module",
        "-",
        f"{costs['classifier']['params']:,}",
        f"{costs['classifier']['flops'] / 1e6:.2f}M",
        f"{costs['classifier']['flops'] / 1e6:.2f}M",
        f"{costs['classifier']['flops'] / base:.1%}",
    )
    for index, branch in enumerate(costs["branches"], start=1):
        table.add_row(
            f"branch {index}",
            str(branch["width"]),
            f"{branch['params']:,}",
            f"{branch['flops'] / 1e6:.2f}M",
            f"{branch['executed_flops'] / 1e6:.2f}M",
            f"{branch['flops'] / base:.1%}",
        )
    out = table_console()
    out.print(table)
    out.print(f"ClassSR parameters: {costs['params']:,}")


@user_errors
def bench(
    dataset: str = typer.Argument(
        ...,
        help="Folder with HR/ (and LR/), a folder of HR photos, or a name such as Test8K.",
        show_default=False,
    ),
    model: str = ANY_MODEL_OPTION,
    weights: str = typer.Option(None, "--weights", "-w", help="ClassSR weights file (default: shipped)."),
    noise_sigma: float = typer.Option(
        None, "--noise-sigma", help="Denoising models: Gaussian noise added to the images, 0-255 (25)."
    ),
    base_weights: str = typer.Option(
        None, "--base-weights", help="Base (-O) network weights (default: shipped, else ClassSR's branch M)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, fp16 or bf16."),
    batch_size: int = typer.Option(None, "--batch-size", help="Tiles per call (default: 16 CPU, 256 GPU)."),
    flops_budget: float = typer.Option(None, "--flops-budget", help="Add ClassSR within F x base FLOPs."),
    report: Path = typer.Option(None, "--report", help="Also write CSV, JSON, PSNR-FLOPs plot, class maps."),
    data_root: Path = typer.Option(
        None, "--data-root", help="Where named test sets live (default: $CLASSSR_DATA, else ./datasets)."
    ),
    limit: int = typer.Option(None, "--limit", help="Only the first N images (by name)."),
    tiling: str = TILING_OPTION,
    back_projection: bool = BACK_PROJECTION_OPTION,
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Compare bicubic, the base network and ClassSR on a test set: PSNR, FLOPs, classes, speed (Table 2)."""

    from classsr_cli import bench as benchmark
    from classsr_cli.api import load_network

    # a comparison needs ClassSR, of either task
    loaded, notes = load_network(model, weights, task=None, base_fallback=False)
    for line in notes:
        print_note(line)
    network, family = loaded.model, loaded.family
    protocol = benchmark.protocol_for(family, noise_sigma)
    root, pairs = benchmark.find_pairs(dataset, data_root, limit, protocol)
    if report is not None:
        benchmark.prepare_report_dir(report)
    base = benchmark.choose_base(family, base_weights, network)
    rows = benchmark.build_contenders(
        network,
        family,
        base,
        device=device,
        precision=precision,
        batch_size=batch_size,
        flops_budget=flops_budget,
        tiling=tiling,
        back_projection=back_projection,
        protocol=protocol,
    )
    with progress_bars() as progress:
        result = benchmark.run_bench(
            root,
            pairs,
            rows,
            family,
            flops_budget=flops_budget,
            keep_class_grids=report is not None,
            progress=progress,
            protocol=protocol,
        )
    if report is not None:
        benchmark.write_report(result, report, log=say)
    if as_json:
        print_json(result.as_json())
    else:
        benchmark.print_tables(result, console)
