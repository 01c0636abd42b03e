"""The `classsr` command line: thin commands that check options and call the library.

Errors a user can cause (ClasssrError) print one line, `error: ...`, on stderr and exit with code 2;
`--debug` shows the traceback instead. `--json` prints exactly one JSON document on stdout.
"""

import json
import sys
from collections.abc import Callable
from functools import wraps

import typer
from rich.console import Console
from rich.table import Table

from classsr_cli.errors import ClasssrError

app = typer.Typer(
    name="classsr",
    help="Upscale large images x4 with ClassSR: easy regions go to small networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# progress, tables and messages go to stderr so that stdout carries only --json documents
console = Console(stderr=True)
EXIT_USER_ERROR = 2


def user_errors(command: Callable) -> Callable:
    """Turn the project's errors (and Ctrl-C) into a one-line message and exit code 2."""

    @wraps(command)
    def run(*args, **kwargs):
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except ClasssrError as error:
            if debug:
                raise
            console.print(f"error: {error}", style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            if debug:
                raise
            console.print("error: interrupted", style="red", markup=False, highlight=False)
            raise typer.Exit(130) from None

    return run


def print_json(document) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def parse_widths(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ClasssrError(f"--widths takes integers separated by commas, got '{text}'") from None


@app.callback()
def _root():
    """Upscale large images x4 with ClassSR: easy regions go to small networks."""


DEBUG_OPTION = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else there.")


@app.command()
@user_errors
def flops(
    model: str = typer.Option("fsrcnn", "--model", "-m", help="Family: fsrcnn, carn, srresnet or rcan."),
    classes: int = typer.Option(None, "--classes", help="Number of classes M (2-5); default 3."),
    widths: str = typer.Option(None, "--widths", help="Branch widths simple->hard, e.g. 16,36,56."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """FLOPs and parameters per 32x32 sub-image (x4), in the paper's convention and as executed."""
    from classsr_cli.flops import classsr_costs
    from classsr_cli.models import create, get_family

    family = get_family(model)
    costs = {"model": family.name, **classsr_costs(create(family.name, parse_widths(widths), classes))}
    if as_json:
        print_json(costs)
        return
    table = Table(title=f"ClassSR-{family.title}, x{costs['scale']}, per {costs['patch']}x{costs['patch']} sub-image")
    for column in ("module", "width", "params", "FLOPs (paper)", "FLOPs (executed)", "of base"):
        table.add_column(column, justify="right" if column != "module" else "left")
    base = costs["branches"][-1]["flops"]
    table.add_row("Class-Module", "-", f"{costs['classifier']['params']:,}", f"{costs['classifier']['flops'] / 1e6:.2f}M",
                  f"{costs['classifier']['flops'] / 1e6:.2f}M", f"{costs['classifier']['flops'] / base:.1%}")
    for index, branch in enumerate(costs["branches"], start=1):
        table.add_row(f"branch {index}", str(branch["width"]), f"{branch['params']:,}", f"{branch['flops'] / 1e6:.2f}M",
                      f"{branch['executed_flops'] / 1e6:.2f}M", f"{branch['flops'] / base:.1%}")
    Console().print(table)
    Console().print(f"ClassSR parameters: {costs['params']:,}")


def main() -> None:
    app()
