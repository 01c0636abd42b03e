"""The `classsr` command line: thin commands that check options and call the library.

Errors a user can cause (ClasssrError) print one line, `error: ...`, on stderr and exit with code 2;
`--debug` shows the traceback instead. `--json` prints exactly one JSON document on stdout.
"""

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from classsr_cli.errors import ClasssrError, ReportedElsewhere

if TYPE_CHECKING:
    from classsr_cli.engine.plan import RunPlan
    from classsr_cli.engine.ranks import Ranks


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


app = typer.Typer(
    cls=CleanHelpGroup,
    name="classsr",
    help="Upscale large images x4 (or denoise them) with ClassSR: easy regions go to small networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# progress, tables and messages go to stderr so that stdout carries only --json documents
console = Console(stderr=True)
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


@app.command(cls=CleanHelp)
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
    from classsr_cli.flops import classsr_costs
    from classsr_cli.models import create, get_family

    family = get_family(model)
    costs = {"model": family.name, **classsr_costs(create(family.name, parse_widths(widths), classes))}
    if as_json:
        print_json(costs)
        return
    task = f"x{costs['scale']}" if costs["scale"] > 1 else "denoising"
    table = Table(title=f"ClassSR-{family.title}, {task}, per {costs['patch']}x{costs['patch']} sub-image")
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
    Console().print(table)
    Console().print(f"ClassSR parameters: {costs['params']:,}")


def best_shipped_family(task: str = "upscale") -> str:
    """The most capable family of the task with shipped weights (ClassSR first, else a base network)."""
    from classsr_cli.errors import WeightsError
    from classsr_cli.models import PREFERENCE
    from classsr_cli.weights import shipped_families

    for kind in ("classsr", "base"):
        shipped = shipped_families(kind)
        for family in PREFERENCE[task]:
            if family in shipped:
                return family
    raise WeightsError(f"no {task} weights are shipped with this installation: pass --weights FILE")


def load_for_inference(
    model: str | None,
    weights: str | None,
    base_fallback: bool = True,
    quiet: bool = False,
    task: str | None = "upscale",
):
    """(model, family) from --model/--weights: a file if given, else the family's shipped weights.

    Where a family ships no ClassSR weights yet but its base network, that network runs on every tile
    (the CLI says so unless `quiet`; not with base_fallback off): as good as the base network, just
    without the savings. A model of another task (a denoiser for upscale) is refused in one line; task None
    takes either.
    """
    from classsr_cli.models import family_for_task, get_family
    from classsr_cli.weights import load_weights, shipped_entry

    family = (family_for_task(model, task) if task else get_family(model)).name if model else None
    if weights:
        loaded = load_weights(weights, family=family)
        if task:
            family_for_task(loaded.family, task)
    else:
        family = family or best_shipped_family(task or "upscale")
        if (
            base_fallback
            and shipped_entry(family, "classsr") is None
            and shipped_entry(family, "base") is not None
        ):
            if not quiet:
                console.print(
                    f"note: no ClassSR weights are shipped for {family} yet: its base network runs on "
                    "every tile",
                    style="yellow",
                    markup=False,
                    highlight=False,
                )
            loaded = load_weights(family, kind="base")
        else:
            loaded = load_weights(family, kind="classsr")
    return loaded.model, loaded.family


INPUT_ARGUMENT = typer.Argument(..., help="Image file, or a folder of images.", show_default=False)
OUTPUT_ARGUMENT = typer.Argument(
    ..., help="Output file (type from its extension), or a folder.", show_default=False
)
MODEL_WEIGHTS_OPTION = typer.Option(
    None, "--weights", "-w", help="Weights file (.safetensors, or an official .pth)."
)
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
PRECISION_OPTION = typer.Option("auto", "--precision", help="auto, fp32, fp16 or bf16.")
BATCH_OPTION = typer.Option(None, "--batch-size", help="Tiles per network call (default: 16 CPU, 256 GPU).")
BRANCH_OPTION = typer.Option(
    None, "--branch", help="Send every tile to branch K (1..M); M is the base network."
)
BUDGET_OPTION = typer.Option(None, "--flops-budget", help="Keep average FLOPs within F x the base (0<F<=1).")
CLASS_MAP_OPTION = typer.Option(None, "--class-map", help="Also write the image tinted by tile class.")
OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Replace existing output files.")
MAX_PIXELS_OPTION = typer.Option(
    None, "--max-pixels", min=1, help="Refuse inputs of more pixels (default: 2^30, 32768 x 32768)."
)


@app.command(cls=CleanHelp)
@user_errors
def upscale(
    input: Path = INPUT_ARGUMENT,
    output: Path = OUTPUT_ARGUMENT,
    model: str = typer.Option(
        None, "--model", "-m", help="fsrcnn, carn, srresnet or rcan (default: best shipped)."
    ),
    weights: str = MODEL_WEIGHTS_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    batch_size: int = BATCH_OPTION,
    branch: int = BRANCH_OPTION,
    flops_budget: float = BUDGET_OPTION,
    class_map: Path = CLASS_MAP_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    tiling: str = TILING_OPTION,
    back_projection: bool = BACK_PROJECTION_OPTION,
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Upscale an image (or every image in a folder) x4 with ClassSR.

    Started by torchrun, the processes share the folder's images (docs/multi-gpu.md).
    """
    restore("upscale", dict(locals()))


@app.command(cls=CleanHelp)
@user_errors
def denoise(
    input: Path = INPUT_ARGUMENT,
    output: Path = OUTPUT_ARGUMENT,
    model: str = typer.Option(None, "--model", "-m", help="dncnn (the default)."),
    weights: str = MODEL_WEIGHTS_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    batch_size: int = BATCH_OPTION,
    branch: int = BRANCH_OPTION,
    flops_budget: float = BUDGET_OPTION,
    class_map: Path = CLASS_MAP_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    tiling: str = TILING_OPTION,
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Remove additive Gaussian noise from an image (or every image in a folder) with ClassSR-DnCNN.

    A model removes noise of the sigma it was trained at (25 on the 0-255 scale by default; docs/denoise.md).

    Same size out; bit depth, alpha and metadata kept as `upscale` keeps them.

    Started by torchrun, the processes share the folder's images (docs/multi-gpu.md).
    """
    restore("denoise", {**locals(), "back_projection": None})


def restore(task: str, options: dict) -> None:
    """The body of `upscale` and `denoise`: plan the run, build the engine, run every image, report."""
    from classsr_cli.engine import Upscaler
    from classsr_cli.engine.pipeline import upscale_file
    from classsr_cli.engine.plan import plan_run
    from classsr_cli.engine.ranks import joined
    from classsr_cli.imaging import DEFAULT_MAX_PIXELS

    o = options
    as_json, overwrite, flops_budget = o["as_json"], o["overwrite"], o["flops_budget"]
    # errors are reported before the ranks leave the group: torchrun stops the others when one exits
    with joined() as ranks, errors_reported(o["debug"], as_json):
        # refuses a lossy plan before any work; made once, by rank 0, so that every rank has the same one
        plan = ranks.from_main(lambda: plan_run(o["input"], o["output"], o["class_map"], overwrite=overwrite))
        if ranks.is_main:
            for note in plan.notes:
                console.print(f"note: {note}", style="yellow", markup=False, highlight=False)

        def build_engine():
            network, family = load_for_inference(o["model"], o["weights"], quiet=not ranks.is_main, task=task)
            engine = Upscaler(
                network,
                ranks.device_spec(o["device"]),
                o["precision"],
                o["batch_size"],
                o["branch"],
                flops_budget,
                o["tiling"],
                o["back_projection"],
            )
            return engine, family

        engine, family = ranks.agree(build_engine)
        limit = o["max_pixels"] or DEFAULT_MAX_PIXELS
        ranks.from_main(plan.make_folders)

        def restore_one(job, on_progress):
            return upscale_file(
                engine,
                job.source,
                job.target,
                overwrite=overwrite,
                max_pixels=limit,
                class_map=job.class_map,
                on_progress=on_progress,
            )

        reports, failures = run_jobs(plan, ranks, restore_one, as_json)
        if ranks.is_main:
            if flops_budget and any(r.flops_ratio > flops_budget + 1e-9 for r in reports):
                console.print(
                    f"warning: a FLOPs budget of {flops_budget} is below the smallest branch plus the "
                    "Class-Module; every tile went to branch 1",
                    style="yellow",
                    markup=False,
                    highlight=False,
                )
            if as_json:
                model = model_ran(family, engine)
                documents = [{**r.as_json(), "model": model} for r in reports] + failures
                print_json(documents if plan.from_folder else documents[0])
            else:
                print_upscale_summary(reports, family, engine)
            for line in plan.skipped:
                console.print(
                    f"note: skipped {line}", style="yellow", markup=False, highlight=False, soft_wrap=True
                )
    if failures:  # on every rank, so that torchrun reports the launch as failed
        raise typer.Exit(EXIT_USER_ERROR)


def run_jobs(plan: "RunPlan", ranks: "Ranks", do_one: Callable, as_json: bool) -> tuple[list, list[dict]]:
    """Run this process's share of `plan.jobs` (all of them without torchrun) with progress bars.

    `do_one(job, on_progress)` returns the job's report (an ImageReport), calling `on_progress(done,
    total)` as it goes. Returns every rank's (reports, failures), each in plan order, on every rank; a
    failure is `{"input": path, "error": message}`, printed once, by the rank that met it. Under torchrun
    each report and failure also says which `rank` did it. An InputError or OutputError is a failure in a
    folder run or under --json, and is raised otherwise (on every rank, reported by rank 0).
    """
    from classsr_cli.errors import InputError, OutputError

    mine = ranks.share_images([job.source for job in plan.jobs])
    results: dict[int, object] = {}

    def run_mine():
        with progress_bars(disable=not ranks.is_main) as progress:
            overall = progress.add_task("images", total=len(mine)) if len(mine) > 1 else None
            for index in mine:
                job = plan.jobs[index]
                task = progress.add_task(job.source.name, total=None)
                try:
                    report = do_one(
                        job,
                        lambda done, total, task=task: progress.update(task, completed=done, total=total),
                    )
                    if ranks.distributed:
                        report.rank = ranks.rank
                    results[index] = report
                    for note in report.notes:
                        console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
                except (InputError, OutputError) as error:
                    if not plan.from_folder and not as_json:
                        raise
                    results[index] = {"input": str(job.source), "error": str(error)}
                    if ranks.distributed:
                        results[index]["rank"] = ranks.rank
                    print_error(str(error))
                progress.remove_task(task)
                if overall is not None:
                    progress.advance(overall)

    ranks.agree(run_mine)  # a rank that stops makes them all stop, rather than wait for it at the gathering
    gathered = ranks.gather(results)
    ordered = [gathered[index] for index in sorted(gathered)]
    return [r for r in ordered if not isinstance(r, dict)], [r for r in ordered if isinstance(r, dict)]


def progress_bars(disable: bool = False):
    from classsr_cli.progress import progress_bar

    return progress_bar(disable=disable, transient=True, console=console)


def class_map_legend(num_classes: int) -> str:
    if num_classes == 3:
        return "green: simple, branch 1; yellow: medium, branch 2; red: hard, branch 3"
    return f"green: branch 1 (simplest) through yellow to red: branch {num_classes} (hardest)"


def model_ran(family: str, engine) -> str:
    """Which model ran, in words: the default is the best shipped one, so summaries name it."""
    from classsr_cli.models import get_family

    title = get_family(family).title
    if engine.plan.classifies:
        return f"ClassSR-{title}"
    if engine.num_classes == 1:
        return f"{title}, one network"
    return f"ClassSR-{title}, branch {engine.plan.fixed_branch + 1} only"


def print_upscale_summary(reports, family: str, engine) -> None:
    model = model_ran(family, engine)
    for report in reports:
        # a line of its own: a table's title wraps at the (narrow) table's width
        console.print(f"{Path(report.output).name}: {model}, tiles per class", markup=False, highlight=False)
        table = Table(show_header=True)
        table.add_column("class")
        table.add_column("width", justify="right")
        table.add_column("tiles", justify="right")
        table.add_column("share", justify="right")
        for index, count in enumerate(report.class_counts):
            share = count / report.tiles if report.tiles else 0.0
            width = engine.branches[index].width
            table.add_row(f"branch {index + 1}", str(width), f"{count:,}", f"{share:.1%}")
        console.print(table)
        speed = report.out_width * report.out_height / 1e6 / max(report.seconds, 1e-9)
        # short lines of their own: one long line broke mid-phrase in an 80-column terminal
        lines = [
            f"{report.width}x{report.height} -> {report.out_width}x{report.out_height} in "
            f"{report.seconds:.1f} s ({speed:.2f} output MP/s on {report.device})",
            f"engine: {report.engine_seconds:.1f} s of it (the rest: reading and writing)",
            f"FLOPs: {report.flops_ratio:.1%} of the base network's (saved {1 - report.flops_ratio:.1%})",
            f"executed: {report.executed_ratio:.0%} of the base network run once over the image",
        ]
        if report.class_map:
            legend = class_map_legend(len(report.class_counts))
            lines.append(f"class map: {report.class_map} ({legend})")
        for line in lines:
            console.print(line, markup=False, highlight=False)


# -- train ------------------------------------------------------------------------------------------

train_app = typer.Typer(
    cls=CleanHelpGroup,
    help="Train ClassSR in the paper's three stages: branches, classifier, joint.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

# unset options (None) come from the checkpoint on --resume, else from the stage's paper defaults
TRAIN_DATA = typer.Option(..., "--data", help="Folder made by `classsr prepare-data`.", show_default=False)
TRAIN_OUT = typer.Option(..., "--out", help="Run folder: weights, checkpoints and logs.", show_default=False)
TRAIN_MODEL = typer.Option(None, "--model", "-m", help="Family: fsrcnn, carn, srresnet, rcan or dncnn.")
TRAIN_ITERS = typer.Option(None, "--iters", min=1, help="Iterations (stage 1: 500k, stages 2-3: 200k).")
TRAIN_BATCH = typer.Option(None, "--batch-size", min=1, help="Batch over all processes (16; stages 2-3: 96).")
TRAIN_LR = typer.Option(
    None, "--lr", help="Initial learning rate, cosine to 1e-7 (1e-3, DnCNN 1e-4; stages 2-3: 2e-4)."
)
TRAIN_INIT = typer.Option(None, "--init", help="Starting weights (RUN/stage1, RUN/stage2.safetensors).")
TRAIN_RESUME = typer.Option(False, "--resume", help="Continue from RUN/<stage>.ckpt and its iteration.")
TRAIN_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (torchrun: one GPU each).")
TRAIN_SEED = typer.Option(None, "--seed", help="Seed of weights, data order and augmentation (0).")
TRAIN_VAL_EVERY = typer.Option(None, "--val-every", min=0, help="Validate every K iterations (5000; 0: end).")
TRAIN_VAL_CROP = typer.Option(None, "--val-crop", min=0, help="Validate on central NxN LR crops (192).")
TRAIN_CKPT_MINUTES = typer.Option(None, "--checkpoint-minutes", min=0.0, help="Save every M minutes (5).")
TRAIN_WIDTHS = typer.Option(None, "--widths", help="Branch widths simple->hard, e.g. 16,36,56 (the paper's).")
TRAIN_WORKERS = typer.Option(None, "--workers", min=0, help="Data loader processes (by device).")
TRAIN_LOG_EVERY = typer.Option(None, "--log-every", min=1, help="Log to RUN/<stage>.jsonl every K (100).")
TRAIN_CHANNELS_LAST = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC layout (on).")
TRAIN_NOISE_SIGMA = typer.Option(
    None, "--noise-sigma", min=0.0, help="Denoising data: Gaussian noise sigma, 0-255 (the data's, 25)."
)
TRAIN_CLEAN_FRACTION = typer.Option(
    None,
    "--clean-fraction",
    min=0.0,
    max=1.0,
    help="Denoising: this share of each batch trained without noise, input = target (0).",
)
TRAIN_SMOOTH_FRACTION = typer.Option(
    None,
    "--smooth-fraction",
    min=0.0,
    max=1.0,
    help="Share of each batch from synthetic smooth colour fields: smooth gradients then come back "
    "without a faint 4-pixel pattern (default 0).",
)
TRAIN_PRECISION = typer.Option(
    None, "--precision", help="Forward pass: auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16."
)
TRAIN_W_IMAGE = typer.Option(None, "--w-image", min=0.0, help="Weight w1 of the L1 Image-Loss (2000).")
TRAIN_W_CLASS = typer.Option(None, "--w-class", min=0.0, help="Weight w2 of the Class-Loss (1).")
TRAIN_W_LABEL = typer.Option(
    None, "--w-label", min=0.0, help="Cross-entropy towards the data's classes (0; not in the paper)."
)
TRAIN_W_AVERAGE = typer.Option(
    None, "--w-average", min=0.0, help="Weight w3 of the Average-Loss (6): raise it if one branch takes all."
)


def _train_request(arguments: dict):
    """A TrainRequest from a train command's arguments: besides what names the run, each is a setting."""
    from classsr_cli.train import TrainRequest

    naming = {"data", "out", "model", "init", "resume", "device", "widths"}
    # not settings: output choices, stage-1 choices, and the stage name a stage command closes over
    reporting = {"as_json", "debug", "branch", "all_data", "stage"}
    return TrainRequest(
        data=arguments["data"],
        out=arguments["out"],
        model=arguments["model"],
        init=arguments.get("init"),
        resume=arguments["resume"],
        device=arguments["device"],
        widths=parse_widths(arguments["widths"]),
        options={k: v for k, v in arguments.items() if k not in naming | reporting},
    )


def _report_training(summary: dict, as_json: bool) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if as_json:
        print_json(summary)
        return
    psnr = f"{summary['val_psnr']:.3f} dB" if summary.get("val_psnr") is not None else "not measured"
    fractions = summary.get("class_fractions")
    classes = ("  classes " + "/".join(f"{share:.0%}" for share in fractions)) if fractions else ""
    console.print(
        f"{summary['stage']}: {summary['iters']} iterations, val PSNR {psnr}{classes}"
        f" -> {summary['weights']}",
        markup=False,
        highlight=False,
    )


@train_app.command("branches", cls=CleanHelp)
@user_errors
def train_branches_command(
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
    iters: int = TRAIN_ITERS,
    batch_size: int = TRAIN_BATCH,
    lr: float = TRAIN_LR,
    widths: str = TRAIN_WIDTHS,
    resume: bool = TRAIN_RESUME,
    device: str = TRAIN_DEVICE,
    seed: int = TRAIN_SEED,
    val_every: int = TRAIN_VAL_EVERY,
    val_crop: int = TRAIN_VAL_CROP,
    checkpoint_minutes: float = TRAIN_CKPT_MINUTES,
    workers: int = TRAIN_WORKERS,
    log_every: int = TRAIN_LOG_EVERY,
    channels_last: bool = TRAIN_CHANNELS_LAST,
    precision: str = TRAIN_PRECISION,
    noise_sigma: float = TRAIN_NOISE_SIGMA,
    clean_fraction: float = TRAIN_CLEAN_FRACTION,
    smooth_fraction: float = TRAIN_SMOOTH_FRACTION,
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Stage 1: each branch on its class of sub-images (L1), then RUN/stage1.safetensors."""
    request = _train_request(dict(locals()))  # first, while the arguments are all the locals there are
    from classsr_cli.train import train_branches

    _report_training(train_branches(request, branch=branch, all_data=all_data, console=console), as_json)


def _classsr_stage_command(stage: str):
    """The `train classifier` and `train joint` commands: the same options, another stage."""

    def command(
        data: Path = TRAIN_DATA,
        out: Path = TRAIN_OUT,
        model: str = TRAIN_MODEL,
        init: Path = TRAIN_INIT,
        iters: int = TRAIN_ITERS,
        batch_size: int = TRAIN_BATCH,
        lr: float = TRAIN_LR,
        w_image: float = TRAIN_W_IMAGE,
        w_classes: float = TRAIN_W_CLASS,
        w_average: float = TRAIN_W_AVERAGE,
        w_labels: float = TRAIN_W_LABEL,
        widths: str = TRAIN_WIDTHS,
        resume: bool = TRAIN_RESUME,
        device: str = TRAIN_DEVICE,
        seed: int = TRAIN_SEED,
        val_every: int = TRAIN_VAL_EVERY,
        val_crop: int = TRAIN_VAL_CROP,
        checkpoint_minutes: float = TRAIN_CKPT_MINUTES,
        workers: int = TRAIN_WORKERS,
        log_every: int = TRAIN_LOG_EVERY,
        channels_last: bool = TRAIN_CHANNELS_LAST,
        precision: str = TRAIN_PRECISION,
        noise_sigma: float = TRAIN_NOISE_SIGMA,
        as_json: bool = JSON_OPTION,
        debug: bool = DEBUG_OPTION,
    ):
        request = _train_request(dict(locals()))  # first, while the arguments are all the locals there are
        from classsr_cli import train

        run = train.train_classifier if stage == "classifier" else train.train_joint
        _report_training(run(request, console=console), as_json)

    return user_errors(command)


@train_app.command("assemble", cls=CleanHelp)
@user_errors
def train_assemble_command(
    networks: list[Path] = typer.Argument(..., help="Trained single networks, simple -> hard (2 to 5)."),
    out: Path = TRAIN_OUT,
    model: str = TRAIN_MODEL,
    seed: int = typer.Option(0, "--seed", help="Seed of the fresh Class-Module."),
    classifier: Path = typer.Option(
        None,
        "--classifier",
        help="Take the Class-Module from this ClassSR model instead (fine-tuned branches).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing RUN/stage1.safetensors."),
):
    """Stage 1 from networks trained elsewhere (e.g. on all data) -> RUN/stage1.safetensors."""
    from classsr_cli.errors import ModelError, WeightsError
    from classsr_cli.models import get_family
    from classsr_cli.train import assemble_networks

    if not model:
        raise ModelError("--model is required: fsrcnn, carn, srresnet, rcan or dncnn")
    target = Path(out) / "stage1.safetensors"
    if target.exists() and not overwrite:
        raise WeightsError(f"{target} exists: pass --overwrite to replace it")
    written = assemble_networks(networks, out, get_family(model).name, seed=seed, classifier_from=classifier)
    console.print(
        f"stage 1 assembled from {len(networks)} networks -> {written}", markup=False, highlight=False
    )


@train_app.command("calibrate", cls=CleanHelp)
@user_errors
def train_calibrate_command(
    weights: Path = typer.Argument(
        ..., help="ClassSR weights after stage 2 or 3, e.g. RUN/stage2.safetensors."
    ),
    data: Path = TRAIN_DATA,
    out: Path = typer.Option(..., "--out", help="Calibrated weights file to write.", show_default=False),
    flops_ratio: float = typer.Option(0.7, "--flops-ratio", help="FLOPs to spend, as a share of the base's."),
    crop: int = typer.Option(
        0, "--val-crop", min=0, help="Only central NxN LR crops of the held-out photos."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Shift routing towards harder branches until the held-out photos cost --flops-ratio of the base."""
    from classsr_cli.errors import WeightsError
    from classsr_cli.train.calibration import calibrate_file

    if out.exists() and not overwrite:
        raise WeightsError(f"{out} exists: pass --overwrite to replace it")
    summary = calibrate_file(weights, data, out, flops_ratio, crop)
    if as_json:
        print_json(summary)
        return
    console.print(
        f"routing shifted by {summary['shift']} per class: FLOPs {summary['flops_ratio_before']:.1%} -> "
        f"{summary['flops_ratio_after']:.1%} of the base on {summary['tiles']} held-out tiles -> {out}",
        markup=False,
        highlight=False,
    )


@train_app.command("relabel", cls=CleanHelp)
@user_errors
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
        )
    if as_json:
        print_json(summary)
        return
    console.print(
        f"labels at {summary['flops_ratio']:.1%} of the base's FLOPs, classes {summary['class_counts']} "
        f"(held out {summary['val_class_counts']}) -> {out}",
        markup=False,
        highlight=False,
    )


@train_app.command("slimmable", cls=CleanHelp)
@user_errors
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
    from classsr_cli.data.photos import list_photos
    from classsr_cli.engine.runner import pick_device
    from classsr_cli.models.registry import get_family, resolve_widths
    from classsr_cli.train.slimmable import Recipe, train_slimmable
    from classsr_cli.weights import load_weights

    family = get_family(model).name
    chosen = resolve_widths(family, widths=parse_widths(widths))
    reference_net = load_weights(reference, kind="base").model if reference else None
    recipe = Recipe(family=family, widths=list(chosen), iters=iters, lr=lr)
    state = train_slimmable(
        recipe,
        ledger,
        data,
        list_photos(val),
        reference=reference_net,
        reference_name=f"{reference}-o" if reference else "reference",
        device=str(pick_device(device)),
        stop_at=stop_at,
        echo=lambda text: console.print(text, markup=False, highlight=False),
    )
    console.print(
        f"{family} at step {state['iteration']} ({state['seconds'] / 3600:.2f} h of training) -> {ledger}",
        markup=False,
        highlight=False,
    )


train_app.command(
    "classifier", cls=CleanHelp, help="Stage 2: the Class-Module, branches frozen -> RUN/stage2.safetensors."
)(_classsr_stage_command("classifier"))
train_app.command(
    "joint", cls=CleanHelp, help="Stage 3: everything fine-tuned together -> RUN/final.safetensors."
)(_classsr_stage_command("joint"))


@app.command("prepare-data", cls=CleanHelp)
@user_errors
def prepare_data_command(
    src: Path = typer.Argument(..., help="Folder of training photos.", show_default=False),
    out: Path = typer.Argument(..., help="Output folder (resumes a run there).", show_default=False),
    scales: str = typer.Option("1.0,0.9,0.8,0.7,0.6", "--scales", help="Factors photos are shrunk by."),
    task: str = typer.Option("upscale", "--task", help="upscale (x4 SR data) or denoise (Gaussian noise)."),
    noise_sigma: float = typer.Option(
        25.0, "--noise-sigma", help="Denoise: noise sigma on the 0-255 scale (added on the fly in training)."
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
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Make training data: scaled HR/LR images and sub-images ranked by difficulty into classes."""
    from classsr_cli.data.prepare import parse_scales, prepare_data

    summary = prepare_data(
        src,
        out,
        parse_scales(scales),
        scale if scale is not None else (1 if task == "denoise" else 4),
        patch,
        stride,
        classes,
        rank_model,
        val_fraction,
        workers,
        seed,
        log=lambda message: console.print(message, markup=False, highlight=False),
        task=task,
        noise_sigma=noise_sigma,
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


@app.command("make-testsets", cls=CleanHelp)
@user_errors
def make_testsets_command(
    src: Path = typer.Argument(..., help="Folder of photos, or DIV8K.", show_default=False),
    out: Path = typer.Argument(..., help="Output: <set>/HR, <set>/LR.", show_default=False),
    sizes: str = typer.Option("2k,4k,full", "--sizes", help="Sets by long side: 2k, 4k, 8k, full or pixels."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Build HR/LR test sets (the paper's Test2K/4K/8K from DIV8K, or sets of given sizes from any photos)."""
    from classsr_cli.data.testsets import make_testsets, parse_sizes

    summary = make_testsets(
        src,
        out,
        parse_sizes(sizes),
        log=lambda message: console.print(message, markup=False, highlight=False),
    )
    if as_json:
        print_json(summary)
        return
    for name, entry in summary["sets"].items():
        note = f", {len(entry['too_small'])} too small (left out)" if entry["too_small"] else ""
        console.print(f"{name}: {entry['images']} images{note} -> {Path(entry['hr']).parent}")
    if summary["skipped"]:
        console.print(f"skipped (unreadable): {', '.join(summary['skipped'])}", style="yellow")


@app.command("bench", cls=CleanHelp)
@user_errors
def bench_command(
    dataset: str = typer.Argument(
        ...,
        help="Folder with HR/ (and LR/), a folder of HR photos, or a name such as Test8K.",
        show_default=False,
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="fsrcnn, carn, srresnet, rcan or dncnn (default: best shipped SR)."
    ),
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
    from functools import partial

    from classsr_cli import bench as benchmark
    from classsr_cli.errors import DataError
    from classsr_cli.models import get_family

    # a comparison needs ClassSR, of either task
    network, family = load_for_inference(model, weights, base_fallback=False, task=None)
    if get_family(family).task == "denoise":
        noise_sigma = 25.0 if noise_sigma is None else noise_sigma
        if not 0 < noise_sigma <= 255:
            raise DataError(f"--noise-sigma must lie in (0, 255] (0-255 scale), got {noise_sigma}")
        protocol = benchmark.Protocol(scale=1, noise_sigma=noise_sigma)
    elif noise_sigma is not None:
        raise DataError("--noise-sigma is for denoising models (dncnn); upscaling benches add no noise")
    else:
        protocol = benchmark.UPSCALE
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
        benchmark.write_report(result, report, log=partial(console.print, markup=False, highlight=False))
    if as_json:
        print_json(result.as_json())
    else:
        benchmark.print_tables(result, console)


@app.command("export", cls=CleanHelp)
@user_errors
def export_command(
    folder: Path = typer.Argument(
        ..., help="Output folder (created; must be empty unless --overwrite).", show_default=False
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="fsrcnn, carn, srresnet or rcan (default: best shipped)."
    ),
    weights: str = typer.Option(
        None, "--weights", "-w", help="ClassSR weights file (.safetensors, or an official .pth)."
    ),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that is not empty."),
    as_json: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
):
    """Write the Class-Module and each branch as ONNX graphs, with classsr.json, for other runtimes."""
    from classsr_cli.export import check_target, export
    from classsr_cli.models import get_family
    from classsr_cli.weights import load_weights

    check_target(folder, overwrite, format)  # before loading anything
    family = get_family(model).name if model else None
    if weights:
        loaded = load_weights(weights, kind="classsr", family=family)
    else:
        loaded = load_weights(family or best_shipped_family(), kind="classsr")
    document = export(
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
        console.print(f"  {name}  {size:,} bytes", markup=False, highlight=False)


weights_app = typer.Typer(
    cls=CleanHelpGroup,
    help="The weights this installation ships and your own: list them, or add yours.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


def _compact(value) -> str:
    """A manifest count for a narrow table cell: thousands as `60k`, a mapping (iterations per stage, in
    the manifest's order) as its values joined by `/`."""
    if isinstance(value, dict):
        return "/".join(_compact(item) for item in value.values())
    if isinstance(value, int) and value >= 1000:
        return f"{value / 1000:g}k"
    return str(value)


@weights_app.command("list", cls=CleanHelp)
@user_errors
def weights_list(as_json: bool = JSON_OPTION, debug: bool = DEBUG_OPTION):
    """Installed weights (shipped, then your own) with widths, training provenance and validation figures."""
    from classsr_cli.weights import latest_val_psnr, listed_models, weights_folders

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
        console.print("no weights found in these folders", style="yellow", markup=False, highlight=False)
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
            str(entry.get("flops_ratio", "-")),
        )
    Console().print(table)


@weights_app.command("add", cls=CleanHelp)
@user_errors
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
    import torch

    from classsr_cli.errors import OutputError, WeightsError
    from classsr_cli.weights import add_to_manifest, load_weights, save_model, user_weights_dir

    loaded = load_weights(source)
    target = user_weights_dir() / (name or source.name)
    if target.suffix != ".safetensors":
        raise OutputError(f"{target.name}: weights are stored as .safetensors")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} already exists: pass --overwrite to replace it")
    facts = {}
    if provenance is not None:
        try:
            facts = json.loads(provenance.read_text())
        except (OSError, ValueError) as error:
            raise WeightsError(f"--provenance {provenance}: not a readable JSON object ({error})") from None
    save_model(loaded.model, target, loaded.family, dtype=torch.float16 if half else torch.float32)
    entry = add_to_manifest(target, facts)
    if as_json:
        print_json(entry)
    else:
        console.print(
            f"added {target} ({entry['bytes']:,} bytes, sha256 {entry['sha256'][:12]}...)", markup=False
        )


def main() -> None:
    from classsr_cli.interrupts import terminations_raise

    with terminations_raise():
        app()
