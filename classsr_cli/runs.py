"""A whole `classsr upscale` or `classsr denoise` run: an image or a folder, in one process or shared by the
processes of a torchrun launch (`engine/ranks.py`), planned before any work and reported per image.

`restore(request, ranks)` plans the run (refusing any plan that could lose a file), loads the model
(`api.load`), creates the output folders and runs this process's share of the images; every process gets
every report back, in plan order. The CLI adds only progress bars and the printing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from classsr_cli.api import EngineOptions, Restorer, load
from classsr_cli.engine.plan import Job, RunPlan, plan_run
from classsr_cli.engine.ranks import Ranks
from classsr_cli.errors import InputError, OutputError

# what a run reports on besides its results: a note or an error message, each one line
Say = Callable[[str], None]


@dataclass(frozen=True)
class RestoreRequest:
    """The options of one `classsr upscale` (task "upscale") or `classsr denoise` run.

    source: an image file or a folder of images; target: a file, or a folder (created) for a folder.
    class_map: also write each image tinted by tile class: a file, or a folder for a folder run.
    overwrite: replace existing outputs (never an input). max_pixels: refuse larger inputs (None: 2^30).
    keep_going: an unreadable image or unwritable output of a single-image run is a failure in the
    results (as in a folder run, always) instead of an error raised.
    model, weights, device, precision, engine: as `api.load` takes them (`engine` as its `options`); under
    torchrun each process takes the device of its local rank (`Ranks.device_spec`).
    """

    task: str
    source: Path
    target: Path
    class_map: Path | None = None
    overwrite: bool = False
    max_pixels: int | None = None
    keep_going: bool = False
    model: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    engine: EngineOptions = field(default_factory=EngineOptions)


@dataclass
class RunResult:
    """What a run did, in plan order, the same on every process."""

    plan: RunPlan
    restorer: Restorer
    reports: list = field(default_factory=list)  # engine ImageReports of the images done
    failures: list[dict] = field(default_factory=list)  # {"input": path, "error": message[, "rank"]}
    flops_budget: float | None = None
    load_seconds: float = 0.0  # loading the model and building its engine, before the first image

    @property
    def budget_unmet(self) -> bool:
        """A FLOPs budget below what the smallest branch and the Class-Module cost: every tile went to
        branch 1, and the average is still over it."""
        budget = self.flops_budget
        return bool(budget) and any(report.flops_ratio > budget + 1e-9 for report in self.reports)

    def documents(self) -> list[dict]:
        """The JSON documents `--json` prints: one per image (its report and the model), then failures,
        then one per image of a folder run left alone because its output exists (input, output, skipped)."""
        existing = [
            {"input": str(job.source), "output": str(job.target), "skipped": "output exists"}
            for job in self.plan.existing
        ]
        return [self.restorer.report(report) for report in self.reports] + self.failures + existing


def restore(
    request: RestoreRequest,
    ranks: Ranks | None = None,
    *,
    note: Say | None = None,
    failed: Say | None = None,
    progress: Callable[[], AbstractContextManager] | None = None,
) -> RunResult:
    """Run `request` on this process's share of its images (all of them in a single process).

    note(message): the plan's and the model's notes, said once (by rank 0). failed(message): each image
    that failed, said by the process that met it. progress(): a context manager giving a rich Progress
    (rank 0's; others get none). Raises the project's errors for a plan or model that cannot be used
    (before any work), and for a single image that fails without `keep_going`.
    """
    ranks = ranks or Ranks()
    note = note or _silent
    # refuses a lossy plan before any work; made once, by rank 0, so that every rank has the same one
    plan = ranks.from_main(
        lambda: plan_run(request.source, request.target, request.class_map, overwrite=request.overwrite)
    )
    if ranks.is_main:
        for message in plan.notes:
            note(message)

    def load_engine() -> Restorer:
        device = ranks.device_spec(request.device)
        return load(
            request.model,
            request.weights,
            device,
            request.precision,
            task=request.task,
            options=request.engine,
        )

    started = time.perf_counter()
    restorer = ranks.agree(load_engine)
    load_seconds = time.perf_counter() - started
    if ranks.is_main:
        for message in restorer.notes:
            note(message)
    ranks.from_main(plan.make_folders)

    def do_one(job: Job, on_progress) -> object:
        return restorer.run_job(
            job, overwrite=request.overwrite, max_pixels=request.max_pixels, on_progress=on_progress
        )

    keep_going = plan.from_folder or request.keep_going
    reports, failures = run_jobs(plan, ranks, do_one, keep_going, note=note, failed=failed, progress=progress)
    return RunResult(plan, restorer, reports, failures, request.engine.flops_budget, load_seconds)


def run_jobs(
    plan: RunPlan,
    ranks: Ranks,
    do_one: Callable,
    keep_going: bool,
    *,
    note: Say | None = None,
    failed: Say | None = None,
    progress: Callable[[], AbstractContextManager] | None = None,
) -> tuple[list, list[dict]]:
    """Run this process's share of `plan.jobs` (all of them without torchrun).

    `do_one(job, on_progress)` returns the job's report (an ImageReport), calling `on_progress(done,
    total)` as it goes. Returns every rank's (reports, failures), each in plan order, on every rank; a
    failure is `{"input": path, "error": message}`, said once (`failed`), by the rank that met it. Under
    torchrun each report and failure also says which `rank` did it. An InputError or OutputError is a
    failure with `keep_going`, and is raised otherwise (on every rank, reported by rank 0). A report of an
    input with several pages is noted (`note`).
    """
    note, failed = note or _silent, failed or _silent
    mine = ranks.share_images([job.source for job in plan.jobs])
    results: dict[int, object] = {}

    def run_mine():
        bars = progress() if progress is not None and ranks.is_main else nullcontext(None)
        with bars as bar:
            overall = bar.add_task("images", total=len(mine)) if bar is not None and len(mine) > 1 else None
            for index in mine:
                job = plan.jobs[index]
                task = bar.add_task(job.source.name, total=None) if bar is not None else None

                def on_progress(done, total, task=task):
                    if bar is not None:
                        bar.update(task, completed=done, total=total)

                try:
                    report = do_one(job, on_progress)
                    if ranks.distributed:
                        report.rank = ranks.rank
                    results[index] = report
                    for line in report.notes:
                        note(line)
                except (InputError, OutputError) as error:
                    if not keep_going:
                        raise
                    results[index] = {"input": str(job.source), "error": str(error)}
                    if ranks.distributed:
                        results[index]["rank"] = ranks.rank
                    failed(str(error))
                if bar is not None:
                    bar.remove_task(task)
                    if overall is not None:
                        bar.advance(overall)

    ranks.agree(run_mine)  # a rank that stops makes them all stop, rather than wait for it at the gathering
    gathered = ranks.gather(results)
    ordered = [gathered[index] for index in sorted(gathered)]
    return [r for r in ordered if not isinstance(r, dict)], [r for r in ordered if isinstance(r, dict)]


def _silent(message: str) -> None:
    pass
