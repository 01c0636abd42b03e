"""The one look of every progress bar: on stderr, so that stdout carries only --json documents."""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(disable: bool = False, transient: bool = False, console: Console | None = None) -> Progress:
    """A bar on `console` (stderr by default). A transient bar is left out where stderr is no terminal:
    there rich draws only the final state, which for a transient bar is an empty line (before an error)."""
    console = console or Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable or (transient and not console.is_terminal),
        transient=transient,
    )
