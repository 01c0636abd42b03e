"""`classsr weights list` and `classsr weights add`: what is installed, and adding one's own
(`classsr_cli.weights` finds, checks and writes them)."""

from pathlib import Path

import typer
from rich.table import Table

from classsr_cli.cli.common import (
    DEBUG_OPTION,
    JSON_OPTION,
    console,
    group,
    print_json,
    say,
    subcommand,
    table_console,
)

app = group("The weights this installation ships and your own: list them, or add yours.")


def _compact(value) -> str:
    """A manifest count for a narrow table cell: thousands to one decimal as `60k` or `13.2k`, a mapping
    (iterations per stage, in the manifest's order) as its values joined by `/`."""
    if isinstance(value, dict):
        return "/".join(_compact(item) for item in value.values())
    if isinstance(value, int) and value >= 1000:
        return f"{round(value / 1000, 1):g}k"
    return str(value)


@subcommand(app, "list")
def weights_list(as_json: bool = JSON_OPTION, debug: bool = DEBUG_OPTION):
    """Installed weights (shipped, then your own) with widths, training provenance and validation figures."""
    from classsr_cli.weights import latest_flops_ratio, latest_val_psnr, listed_models, weights_folders

    folders = weights_folders()
    models = listed_models()
    if as_json:
        print_json({"folders": {origin: str(folder) for origin, folder in folders}, "models": models})
        return
    for origin, folder in folders:
        role = "read-only" if origin == "shipped" else "`classsr weights add` writes here"
        state = "" if folder.is_dir() else ", none yet"
        console.print(f"{origin} ({role}{state}): {folder}", markup=False, highlight=False, soft_wrap=True)
    if not models:
        say("no weights found in these folders", style="yellow")
        return
    from rich import box

    # fits 80 columns: the folder of each origin is named above, so origin is a column only when mixed
    with_origin = len({entry["origin"] for entry in models}) > 1
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
        caption="val PSNR and FLOPs ratio: as recorded when each file was made (docs/weights.md); "
        "`classsr bench` measures them with this release's engine",
    )
    table.add_column("file", no_wrap=True)  # the name to pass to --weights: never cut
    columns = ["origin"] if with_origin else []
    for column in (*columns, "family", "kind", "widths", "iterations per stage", "val PSNR", "FLOPs ratio"):
        # a narrow terminal wraps these, cutting nothing; words of one token stay whole
        # widths stay on one line: "38/52/6" over "4" would read as other widths
        table.add_column(column, overflow="fold", min_width={"kind": 7, "widths": 8}.get(column))
    for entry in models:
        table.add_row(
            entry["file"],
            *([entry["origin"]] if with_origin else []),
            entry["family"],
            entry["kind"],
            "/".join(map(str, entry["widths"])),
            _compact(entry.get("iterations", "-")),
            str(latest_val_psnr(entry) or "-"),
            str(latest_flops_ratio(entry) or "-"),
        )
    table_console().print(table)


@subcommand(app, "add")
def weights_add(
    source: Path = typer.Argument(..., help="A .safetensors file made by `classsr train`."),
    name: str = typer.Option(
        None, "--name", help="File name in your weights folder (default: the source's)."
    ),
    half: bool = typer.Option(False, "--half", help="Store in fp16 (half the size; loads as fp32)."),
    provenance: Path = typer.Option(None, "--provenance", help="JSON object of training facts to record."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a file of the same name."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Copy trained weights into your weights folder and list them in its manifest (sha256 included).

    They then take precedence over shipped weights of the same family and kind; `weights list` shows where.
    """
    from classsr_cli.weights import add_weights, user_weights_dir

    entry = add_weights(source, name, half=half, provenance=provenance, overwrite=overwrite)
    target = user_weights_dir() / entry["file"]
    if as_json:
        print_json(entry)
    else:
        console.print(
            f"added {target} ({entry['bytes']:,} bytes, sha256 {entry['sha256'][:12]}...)", markup=False
        )
