"""Reporting `classsr bench`: the tables printed (like the paper's Table 2), and the report folder
(`--report`): bench.json, per_image.csv, the PSNR-versus-FLOPs plot and class maps, each file written
atomically."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from classsr_cli.bench.runs import BenchResult
from classsr_cli.errors import OutputError
from classsr_cli.files import atomic_open, atomic_path, write_json

PER_IMAGE_TABLE_LIMIT = 30  # more images than this: the per-image table is left to --json and --report
REPORT_FILES = {
    "json": "bench.json",
    "csv": "per_image.csv",
    "plot": "psnr_vs_flops.png",
    "maps": "class_maps",
}


def skipped_notes(result: BenchResult) -> list[str]:
    """One line per image left out, saying why."""
    return [f"note: skipped {pair.hr}: {pair.skipped}" for pair in result.pairs if pair.skipped]


def lr_summary(result: BenchResult) -> str | None:
    """Which LR the images used, in one line: the set's own, made from HR, or which of each."""
    if result.protocol.denoise:
        return None
    scored = [pair for pair in result.pairs if not pair.skipped]
    given = [pair for pair in scored if pair.lr is not None]
    made = [pair.name for pair in scored if pair.lr is None]
    if not made:
        folder = given[0].lr.parent
        return f"LR: the set's own ({folder}) for every image"
    if not given:
        return "LR: made from HR (MATLAB bicubic x1/4) for every image"
    return (
        f"LR: the set's own ({given[0].lr.parent}) for {_count(len(given), 'image')}, made from HR "
        f"(MATLAB bicubic x1/4) for {_count(len(made), 'image')}: {', '.join(made)}"
    )


def format_flops(flops: float | None) -> str:
    """Like the paper: 468M, 1.15G, 32.60G."""
    if flops is None:
        return "-"
    if flops >= 1e9:
        return f"{flops / 1e9:.2f}G"
    if flops >= 1e8:
        return f"{flops / 1e6:.0f}M"
    if flops >= 1e6:
        return f"{flops / 1e6:.1f}M"
    return f"{flops / 1e3:.1f}K"


def format_params(params: int) -> str:
    if not params:
        return "-"
    return f"{params / 1e6:.2f}M" if params >= 1e6 else f"{params / 1e3:.1f}K"


def format_classes(fractions: list[float] | None) -> str:
    """Like the paper's class split: 61/23/16 (per cent, simple -> hard)."""
    return "/".join(f"{f * 100:.0f}" for f in fractions) if fractions else "-"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _db(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _compact_table(title: str, first_column: str, columns: tuple[str, ...], min_width: int = 0):
    """A table that fits 80 columns: names wrap on a narrow terminal, figures stay whole."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column(first_column, min_width=min_width)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table


def print_tables(result: BenchResult, console) -> None:
    """The summary like the paper's Table 2, then ClassSR against the base network image by image."""
    document = result.as_json()
    reference = result.protocol.reference
    tiling = f"{result.tiling} tiling" + (", back-projected" if result.back_projection else "")
    # quality and cost in two tables: as one, they needed about 110 columns, and an 80-column terminal cut
    # the model names and the figures themselves
    quality = _compact_table(
        f"{document['dataset']}: {_count(document['images'], 'image')}, {result.protocol.describe()}, "
        f"{tiling}, on {result.device}",
        "model",
        ("PSNR", "PSNR-Y", f"vs {reference} (min)"),
        min_width=16,
    )
    cost = _compact_table(
        "", "model", ("params", "FLOPs", "executed", "classes", "s/img", "MP/s"), min_width=16
    )
    for row in document["rows"]:
        ratio = f" ({row['flops_ratio']:.0%})" if row["flops_ratio"] is not None else ""
        gain = "-"
        if row[f"gain_over_{reference}"] is not None:
            lowest = _db(row[f"min_gain_over_{reference}"], signed=True)
            gain = f"{_db(row[f'gain_over_{reference}'], signed=True)} ({lowest})"
        quality.add_row(row["name"], _db(row["psnr"]), _db(row["psnr_y"]), gain)
        cost.add_row(
            row["name"],
            format_params(row["params"]),
            format_flops(row["flops"]) + ratio,
            f"{row['executed_ratio']:.0%}" if row["executed_ratio"] is not None else "-",
            format_classes(row["class_fractions"]),
            f"{row['seconds']:.3f}" if row["seconds"] is not None else "-",
            f"{row['mp_per_s']:.2f}" if row["mp_per_s"] is not None else "-",
        )
    console.print(quality)
    console.print()
    console.print(cost)
    for row in result.rows:
        if row.note:
            console.print(f"{row.name}: {row.note}", markup=False, highlight=False)
    for line in (lr_summary(result), *skipped_notes(result)):
        if line:
            console.print(line, markup=False, highlight=False)

    base, classsr = document["rows"][0], document["rows"][1]
    if document["images"] > PER_IMAGE_TABLE_LIMIT:
        console.print(f"per-image figures of {document['images']} images: see --json or --report DIR")
        return
    per_image = _compact_table(
        f"{classsr['name']} against {base['name']}, image by image",
        "image",
        ("base PSNR", "ClassSR PSNR", "gain (dB)", "FLOPs ratio", "classes"),
    )
    for ours, theirs in zip(classsr["per_image"], base["per_image"], strict=True):
        gain = ours["psnr"] - theirs["psnr"] if None not in (ours["psnr"], theirs["psnr"]) else None
        per_image.add_row(
            ours["image"],
            _db(theirs["psnr"]),
            _db(ours["psnr"]),
            _db(gain, signed=True),
            f"{ours['flops_ratio']:.0%}" if ours["flops_ratio"] is not None else "-",
            format_classes(ours["class_fractions"]),
        )
    console.print()
    console.print(per_image)


def prepare_report_dir(path: Path) -> Path:
    """Create the report folder before the long run, so a bad path fails at once."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--report must name a folder, but {path} is a file")
    try:
        (path / REPORT_FILES["maps"]).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the report folder {path}: {error.strerror or error}") from None
    return path


def write_report(
    result: BenchResult, folder: Path, log: Callable[[str], None] = lambda message: None
) -> dict:
    """bench.json, per_image.csv, the PSNR-versus-FLOPs plot and class maps; returns what was written."""
    from classsr_cli.imaging.classmap import write_class_map

    folder = prepare_report_dir(folder)
    document = result.as_json()
    written = {}
    try:
        write_json(folder / REPORT_FILES["json"], document)
        written["json"] = str(folder / REPORT_FILES["json"])
        _write_csv(document, folder / REPORT_FILES["csv"])
        written["csv"] = str(folder / REPORT_FILES["csv"])
    except OSError as error:
        raise OutputError(f"cannot write the report in {folder}: {error.strerror or error}") from None
    if _write_plot(document, folder / REPORT_FILES["plot"]):
        written["plot"] = str(folder / REPORT_FILES["plot"])
    else:
        log("matplotlib is not installed: the PSNR-versus-FLOPs plot was skipped (pip install matplotlib)")
    maps = []
    classsr = next(row for row in result.rows if row.kind == "classsr")
    for pair in result.pairs:
        grid = result.class_grids.get(pair.name)
        if grid is None:
            continue
        target = folder / REPORT_FILES["maps"] / f"{pair.name}.png"
        # tiles are placed in LR pixels; the map is drawn over the HR image, `scale` times larger
        scale = result.protocol.scale
        write_class_map(
            pair.hr,
            target,
            grid.as_array(),
            [y * scale for y in grid.rows],
            [x * scale for x in grid.cols],
            classsr.engine.num_classes,
            overwrite=True,
        )
        maps.append(str(target))
    written["class_maps"] = maps
    return written


def _write_csv(document: dict, path: Path) -> None:
    classes = max((len(r["class_fractions"] or []) for r in document["rows"]), default=0)
    class_columns = [f"class_{index}" for index in range(1, classes + 1)]
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        sources = document.get("lr_source", {})
        head = ["image", "row", "psnr", "psnr_y", "flops", "flops_ratio", *class_columns, "seconds"]
        writer.writerow(head + (["lr"] if sources else []))
        for row in document["rows"]:
            for entry in row["per_image"]:
                fractions = entry["class_fractions"] or []
                writer.writerow(
                    [
                        entry["image"],
                        row["name"],
                        *(_cell(entry[key]) for key in ("psnr", "psnr_y", "flops", "flops_ratio")),
                        *(_cell(fractions[i]) if i < len(fractions) else "" for i in range(classes)),
                        _cell(entry["seconds"]),
                        *([sources[entry["image"]]] if sources else []),
                    ]
                )


def _cell(value) -> str:
    return "" if value is None else str(value)


# a y axis spans at least this many dB: hundredths of a dB drawn across a whole axis look like a gulf
MIN_PSNR_SPAN = 0.2


def _widen(axes, values: list[float], span: float) -> None:
    """Plain dB tick labels (no offset) over at least `span` dB around `values`."""
    axes.ticklabel_format(axis="y", useOffset=False)
    if values and max(values) - min(values) < span:
        middle = (max(values) + min(values)) / 2
        axes.set_ylim(middle - span / 2, middle + span / 2)


def _write_plot(document: dict, path: Path) -> bool:
    """Fig. 2 of the paper for this set (PSNR against FLOPs per sub-image) and ClassSR's gain per image."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: no display and no global pyplot state
    overview, gains = figure.subplots(1, 2)
    networks = [row for row in document["rows"] if row["flops"] is not None and row["psnr"] is not None]
    for row in networks:
        overview.scatter(row["flops"] / 1e6, row["psnr"], s=60, zorder=3, label=row["name"])
    base, classsr = document["rows"][0], document["rows"][1]
    if base in networks and classsr in networks:
        overview.annotate(
            "",
            xy=(classsr["flops"] / 1e6, classsr["psnr"]),
            xytext=(base["flops"] / 1e6, base["psnr"]),
            arrowprops={"arrowstyle": "->", "color": "grey"},
        )
    if networks:
        overview.legend(loc="best")
    # bicubic sits far below the networks: drawn, it would flatten the differences that matter
    baseline = next((row for row in document["rows"] if row["kind"] in ("bicubic", "noisy")), None)
    reference = (
        f", {baseline['kind']} {baseline['psnr']:.2f} dB" if baseline and baseline["psnr"] is not None else ""
    )
    overview.set_xlabel("FLOPs per 32x32 sub-image (M)")
    overview.set_ylabel("PSNR (dB)")
    overview.set_title(f"{document['dataset']} ({_count(document['images'], 'image')}{reference})")
    overview.set_xlim(left=0)
    _widen(overview, [row["psnr"] for row in networks], MIN_PSNR_SPAN)
    overview.grid(alpha=0.3)

    points = [
        (ours["flops_ratio"], ours["psnr"] - theirs["psnr"])
        for ours, theirs in zip(classsr["per_image"], base["per_image"], strict=True)
        if None not in (ours["flops_ratio"], ours["psnr"], theirs["psnr"])
    ]
    if points:
        ratios, deltas = zip(*points, strict=True)
        gains.scatter([r * 100 for r in ratios], deltas, s=18)
    gains.axhline(0, color="grey", linewidth=1)
    _widen(gains, [0.0, *(delta for _, delta in points)], MIN_PSNR_SPAN)
    gains.set_xlabel(f"{classsr['name']} FLOPs (% of {base['name']})")
    gains.set_ylabel("PSNR gain over the base network (dB)")
    gains.set_title("image by image")
    gains.grid(alpha=0.3)
    try:
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=120, format="png")
    except OSError as error:
        raise OutputError(f"cannot write the plot {path}: {error.strerror or error}") from None
    return True
