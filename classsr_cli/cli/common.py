"""What every command of the `classsr` command line shares: help that reads cleanly, one-line errors, JSON
on stdout, progress on stderr, and the options several commands take.

Errors a user can cause (ClasssrError) print one line, `error: ...`, on stderr and exit with code 2;
`--debug` shows the traceback instead. `--json` prints exactly one JSON document on stdout.
"""

import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import get_type_hints

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from classsr_cli.errors import ClasssrError, ReportedElsewhere


def _clean_flags(params: list) -> list:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: no `<bool>` after --json, --overwrite, --help
    return params


class CleanHelp(TyperCommand):
    """Help that reads cleanly: `classsr upscale [OPTIONS] INPUT OUTPUT`, and no type after a flag."""

    def get_params(self, ctx):
        return _clean_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx):
        # typer writes required arguments as {input}; the usual spelling is INPUT
        return [
            re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), piece)
            for piece in super().collect_usage_pieces(ctx)
        ]


class CleanHelpGroup(TyperGroup):
    def get_params(self, ctx):
        return _clean_flags(super().get_params(ctx))


def group(help_text: str) -> typer.Typer:
    """A command group (`classsr train`, `classsr weights`) with the same clean help as the root."""
    return typer.Typer(cls=CleanHelpGroup, help=help_text, no_args_is_help=True)


# progress, tables and messages go to stderr so that stdout carries only --json documents
console = Console(stderr=True)
# columns of a table printed on stdout when it goes to a pipe or a file and COLUMNS is not set: room for
# whole rows, where a terminal's 80 would fold them
PIPED_WIDTH = 200


def table_console() -> Console:
    """A console for a table on stdout: a terminal's width (or COLUMNS where set); piped or redirected,
    PIPED_WIDTH, so that each row stays on one line for grep and the like."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPED_WIDTH)


EXIT_USER_ERROR = 2


def print_error(message: str) -> None:
    """One `error: ...` line on stderr; a closed terminal (SIGHUP) must not turn it into a traceback."""
    try:
        console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    except OSError:
        pass


@contextmanager
def errors_reported(debug: bool = False, as_json: bool = False) -> Iterator[None]:
    """Turn the project's errors into a one-line message and exit code 2; Ctrl-C, SIGTERM and SIGHUP stop
    with 128 + the signal's number (130, 143, 129), after every with-block has removed its partial files.
    With --json an error is also a JSON document on stdout: {"error": message}. A ReportedElsewhere (another
    process of a torchrun launch prints it) exits with code 2 silently. `debug` re-raises instead.
    """
    try:
        yield
    except ReportedElsewhere:
        if debug:
            raise
        raise typer.Exit(EXIT_USER_ERROR) from None
    except ClasssrError as error:
        if debug:
            raise
        print_error(str(error))
        if as_json:
            print_json({"error": str(error)})
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt as interruption:
        if debug:
            raise
        from classsr_cli.interrupts import Terminated

        if isinstance(interruption, Terminated):
            print_error(f"stopped by {interruption}")
            raise typer.Exit(interruption.exit_code) from None
        print_error("interrupted")
        raise typer.Exit(130) from None


def user_errors(command: Callable) -> Callable:
    """A command whose errors are handled as `errors_reported` says, reading its --debug and --json."""

    @wraps(command)
    def run(*args, **kwargs):
        with errors_reported(kwargs.get("debug", False), kwargs.get("as_json", False)):
            return command(*args, **kwargs)

    return run


def subcommand(group: typer.Typer, name: str) -> Callable[[Callable], Callable]:
    """`@subcommand(app, "name")`: the function is the group's command `name`, with clean help and user
    errors handled (`user_errors`)."""

    def register(function: Callable) -> Callable:
        handled = user_errors(function)
        group.command(name, cls=CleanHelp)(handled)
        return handled

    return register


def command(body: Callable[..., None], doc: str, fixed: dict | None = None, options: dict | None = None):
    """A command whose options are `body`'s parameters (typer.Option or typer.Argument defaults, in the order
    --help lists them) but for those `fixed` gives values; `options` replaces some parameters' declarations.
    User errors are handled as `user_errors` says; `doc` is its help.

    For commands that differ in a few options only (upscale and denoise, the training stages): one typed
    body declares every option once, and each command is that body with its own choices fixed.
    """
    fixed, options = fixed or {}, options or {}
    hints = get_type_hints(body)
    parameters = [
        parameter.replace(default=options.get(name, parameter.default), annotation=hints[name])
        for name, parameter in inspect.signature(body).parameters.items()
        if name not in fixed
    ]

    def parsed(**arguments):
        return body(**fixed, **arguments)

    parsed.__signature__ = inspect.Signature(parameters)
    parsed.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    parsed.__doc__ = doc
    return user_errors(parsed)


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


DEBUG_OPTION = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")
TILING_OPTION = typer.Option(
    "region",
    "--tiling",
    help="region: sub-images run together in regions with real context (default); paper: every 32x32 tile "
    "alone with zero padding, as the official code (its edges and tile grid show on flat areas).",
)
BACK_PROJECTION_OPTION = typer.Option(
    None,
    "--back-projection/--no-back-projection",
    help="Pull the output to agree with the input (on with region tiling).",
    show_default=False,
)
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else there.")
MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="fsrcnn, carn, srresnet or rcan (default: best shipped)."
)
# commands that take a model of either task (bench, export)
ANY_MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="fsrcnn, carn, srresnet, rcan or dncnn (default: best shipped SR)."
)
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
PRECISION_OPTION = typer.Option("auto", "--precision", help="auto, fp32, fp16 or bf16.")


def progress_bars(disable: bool = False):
    """The transient progress bars of a command, on the console's stderr."""
    from classsr_cli.progress import progress_bar

    return progress_bar(disable=disable, transient=True, console=console)


def say(message: str, style: str | None = None) -> None:
    """One plain line on stderr (no markup: paths and messages print as they are)."""
    console.print(message, style=style, markup=False, highlight=False, soft_wrap=True)


def print_note(message: str) -> None:
    """`note: ...` in yellow on stderr."""
    say(f"note: {message}", style="yellow")
