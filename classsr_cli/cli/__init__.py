"""The `classsr` command line: thin commands that parse options, call the library and print its results.

One module per command group: restore.py (upscale, denoise), train.py, data.py (prepare-data,
make-testsets), bench.py (bench, flops), weights.py, export.py; common.py holds what they share.
The commands are registered here, in the order `classsr --help` lists them.
"""

import typer

from classsr_cli.cli import bench, data, export, restore, train, weights
from classsr_cli.cli.common import CleanHelp, CleanHelpGroup

app = typer.Typer(
    cls=CleanHelpGroup,
    name="classsr",
    help="Upscale large images x4 (or denoise them) with ClassSR: easy regions go to small networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def installed_version() -> str:
    """The installed distribution's version; a checkout that is not installed reports the package's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("classsr")
    except PackageNotFoundError:
        from classsr_cli import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        print(f"classsr {installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
):
    """Upscale large images x4 (or denoise them) with ClassSR: easy regions go to small networks."""


app.command(cls=CleanHelp)(bench.flops)
app.command("upscale", cls=CleanHelp)(restore.upscale)
app.command("denoise", cls=CleanHelp)(restore.denoise)
app.command("prepare-data", cls=CleanHelp)(data.prepare_data)
app.command("make-testsets", cls=CleanHelp)(data.make_testsets)
app.command("bench", cls=CleanHelp)(bench.bench)
app.command("export", cls=CleanHelp)(export.export)
app.add_typer(train.app, name="train")
app.add_typer(weights.app, name="weights")


def main() -> None:
    from classsr_cli.interrupts import leave, terminations_raise

    try:
        with terminations_raise():
            app()
    except SystemExit as leaving:  # typer ends every run so, with the run's exit status
        if isinstance(leaving.code, int):
            leave(leaving.code)
        raise
