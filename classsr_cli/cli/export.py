"""`classsr export`: the Class-Module and each branch as ONNX graphs (`classsr_cli.export`)."""

from pathlib import Path

import typer

from classsr_cli.cli.common import (
    ANY_MODEL_OPTION,
    DEBUG_OPTION,
    JSON_OPTION,
    console,
    print_json,
    say,
    user_errors,
)


@user_errors
def export(
    folder: Path = typer.Argument(
        ..., help="Output folder (created; must be empty unless --overwrite).", show_default=False
    ),
    model: str = ANY_MODEL_OPTION,
    weights: str = typer.Option(
        None, "--weights", "-w", help="ClassSR weights file (.safetensors, or an official .pth)."
    ),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that is not empty."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Write the Class-Module and each branch as ONNX graphs, with classsr.json, for other runtimes."""
    from classsr_cli import export as exporting
    from classsr_cli.api import load_network

    exporting.check_target(folder, overwrite, format)  # before loading anything
    loaded, _ = load_network(model, weights, task=None, kind="classsr", base_fallback=False)
    document = exporting.export(
        loaded.model, loaded.family, folder, format=format, overwrite=overwrite, source=loaded.source
    )
    files = [document["classifier"]["file"], *(b["file"] for b in document["branches"]), "classsr.json"]
    sizes = {name: (folder / name).stat().st_size for name in files}
    if as_json:
        print_json({"folder": str(folder), "bytes": sizes, "manifest": document})
        return
    widths = ",".join(map(str, document["widths"]))
    console.print(
        f"{document['title']} ({widths}) from {loaded.source.name} -> {folder}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for name, size in sizes.items():
        say(f"  {name}  {size:,} bytes")
