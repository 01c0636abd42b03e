"""The README's pictures, made from the shipped weights, the validation photos and benchmark JSON files.

    python -m benchmarks.figures --photos <photos> [--bench bench-fsrcnn.json bench-carn.json]
                                 [--peer peer.json] [--out docs/figures] [--only crop,classmap,flops,speed]

- crop.jpg: a 1:1 crop of one validation photo (shown 2x, nearest neighbour): bicubic | every shipped
  ClassSR model | HR. LR = the photo reduced x4 with MATLAB bicubic and rounded to 8 bits (as `classsr
  bench` makes it); the networks run through the engine (`Upscaler`, as `classsr upscale` does) on an LR
  crop with context around the part shown, so it costs seconds. Labels give each panel's PSNR on the crop.
- classmap.jpg: the class map `classsr upscale --class-map` writes (`imaging/classmap.py`), for the LR of
  one validation photo routed by the default model, with a legend: Fig. 1 of the paper.
- psnr-flops.png: PSNR against FLOPs per 32x32 sub-image (paper convention) for every model in the
  `classsr bench ... --json` files given, next to the paper's Test8K points (Table 2).
- speed.png: wall time against the plain network, from the JSON `python -m benchmarks.plain_peer` prints
  (its last JSON document).
- The tables of the README and docs/benchmarks.md are printed as markdown on stdout (the results from
  --bench, the comparison with the plain network from --peer); --tables also writes them into those files,
  between `<!-- KEY -->` and `<!-- /KEY -->` markers.

A part whose input is not given is skipped. Run it again when the weights change (`make figures`).
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "figures"

# The default photo and region: a nuthatch on bark against a blurred background (CC-BY-SA-3.0, Lukas
# Baubkus; weights/ATTRIBUTION.md): its bark, feathers and bokeh fill all three classes.
PHOTO = "lomiri-wallpapers-20.04__Kleiber_by_Lukas_Baubkus.jpg"
CROP_AT = (2944, 1960)  # HR (x, y) of the crop's top-left corner: the bird's eye and beak
CROP_SIZE = 192  # HR pixels shown per panel
CROP_CONTEXT = 28  # LR pixels of real image around the shown part that the networks see
CROP_ZOOM = 2  # shown at 2x, nearest neighbour: pixels stay pixels
JPEG_QUALITY = 90

# Paper Table 2, Test8K (Kong et al., CVPR 2021): PSNR (dB, RGB) and FLOPs per 32x32 LR sub-image.
PAPER_TEST8K = {
    "FSRCNN": {"-O": (32.66, 468e6), "ClassSR": (32.73, 238e6)},
    "CARN": {"-O": (33.18, 1.15e9), "ClassSR": (33.24, 608e6)},
    "SRResNet": {"-O": (33.50, 5.20e9), "ClassSR": (33.50, 2.70e9)},
    "RCAN": {"-O": (33.76, 32.60e9), "ClassSR": (33.73, 16.36e9)},
}
FAMILY_COLOURS = {"FSRCNN": "tab:blue", "CARN": "tab:orange", "SRResNet": "tab:green", "RCAN": "tab:red"}
FAMILY_NAMES = {"fsrcnn": "FSRCNN", "carn": "CARN", "srresnet": "SRResNet", "rcan": "RCAN", "dncnn": "DnCNN"}


def _family_order(family: str) -> int:
    order = list(FAMILY_NAMES)
    return order.index(family) if family in order else len(order)


# -- input files ----------------------------------------------------------------------------------------


def read_bench(paths: list[Path]) -> list[dict]:
    """The documents `classsr bench --json` printed, one per file."""
    return [json.loads(Path(path).read_text()) for path in paths]


def last_json_document(text: str) -> dict:
    """The last JSON document of a stream of several (plain_peer prints one line per row, then the report)."""
    decoder, position, last = json.JSONDecoder(), 0, None
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        try:
            last, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:  # a line of other output: skip it
            newline = text.find("\n", position)
            position = len(text) if newline < 0 else newline + 1
    if not isinstance(last, dict):
        raise SystemExit("no JSON document found")
    return last


# -- the results table ----------------------------------------------------------------------------------


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def results_table(documents: list[dict], full: bool = False) -> str:
    """Markdown: one row per model of the bench files (ClassSR after its base network), bicubic last.

    `full` adds PSNR on Y, the mean gain over bicubic and output megapixels per second."""
    columns = ["model", "PSNR (dB)"] + (["PSNR-Y (dB)", "mean gain over bicubic (dB)"] if full else [])
    columns += ["lowest gain over bicubic (dB)", "FLOPs (paper convention)", "executed FLOPs", "s per image"]
    columns += (["output MP/s"] if full else []) + ["class split"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    bicubic = None
    for document in documents:
        for row in document["rows"]:
            if row["kind"] == "bicubic":
                bicubic = bicubic or row
                continue
            split = " / ".join(_percent(f) for f in row["class_fractions"] or []) or "-"
            flops = (
                "-" if row["flops"] is None else f"{row['flops'] / 1e6:.0f}M ({_percent(row['flops_ratio'])})"
            )
            cells = [row["name"], f"{row['psnr']:.2f}"]
            cells += [f"{row['psnr_y']:.2f}", _signed(row["gain_over_bicubic"])] if full else []
            cells += [_signed(row["min_gain_over_bicubic"]), flops, _percent(row["executed_ratio"])]
            cells += [f"{row['seconds']:.2f}"] + ([f"{row['mp_per_s']:.1f}"] if full else []) + [split]
            lines.append("| " + " | ".join(cells) + " |")
    if bicubic is not None:
        cells = ["Bicubic", f"{bicubic['psnr']:.2f}"] + ([f"{bicubic['psnr_y']:.2f}", "-"] if full else [])
        cells += ["-", "-", "-", f"{bicubic['seconds']:.2f}"]
        cells += ([f"{bicubic['mp_per_s']:.1f}"] if full else []) + ["-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _signed(value) -> str:
    return "-" if value is None else f"{value:+.2f}"


def peer_settings(report: dict) -> str:
    """One line: how plain_peer ran, from its report."""
    reduce = report.get("reduce", 1)
    return (
        f"{report.get('crop', '?')} HR pixels"
        + (f" of each photo reduced {reduce}x first" if reduce and reduce > 1 else "")
        + f", on {report.get('device', '?')} with {report.get('threads', '?')} threads"
        + (
            f"; DnCNN: the central crop of half that size with noise of sigma {report['noise_sigma']:g}"
            if "dncnn" in report["families"] and "noise_sigma" in report
            else ""
        )
    )


def peer_rows(table: dict) -> dict:
    """A family's rows of a plain_peer report (its `engine_ratios` entry left out)."""
    return {name: entry for name, entry in table.items() if "seconds" in entry}


def _peer_row(table: dict, test) -> dict | None:
    return next((entry for name, entry in peer_rows(table).items() if test(name)), None)


def peer_table(report: dict) -> str:
    """Markdown: the rows of a plain_peer report, per family, with times against the plain network."""
    columns = ["family", "row", "s (all crops)", "time against plain", "PSNR (dB)", "against plain (dB)"]
    columns += ["FLOPs (paper convention)", "executed FLOPs"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for family, table in report["families"].items():
        for name, entry in peer_rows(table).items():
            cells = [
                FAMILY_NAMES.get(family, family),
                name,
                f"{entry['seconds']:.2f}",
                f"{entry['time_ratio']:.2f}",
            ]
            cells += [f"{entry['psnr']:.2f}", _signed(entry["psnr_vs_peer"])]
            cells += [_percent(entry.get("flops_ratio")), _percent(entry.get("executed_ratio"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_short_table(report: dict) -> str:
    """Markdown for the README: per family, the plain network against ClassSR, the base network through the
    engine and (where it ran) the base network whole-image in onnxruntime, and the engine's own ratio:
    ClassSR's time over the base network's through the engine, against their executed FLOPs."""
    columns = ["family", "plain network (all crops)", "ClassSR (all crops)", "ClassSR against plain"]
    columns += ["base network through the engine", "onnxruntime, whole image"]
    columns += ["engine: ClassSR over base, time / executed FLOPs"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for family, table in report["families"].items():
        plain = next(iter(peer_rows(table).values()))
        classsr = _peer_row(table, lambda name: name.startswith("ClassSR-") and "paper" not in name)
        base = _peer_row(table, lambda name: "through the engine" in name)
        onnx = _peer_row(table, lambda name: "onnxruntime" in name)
        ratios = table.get("engine_ratios")
        cells = [
            FAMILY_NAMES.get(family, family),
            f"{plain['seconds']:.2f} s, {plain['psnr']:.2f} dB",
            f"{classsr['seconds']:.2f} s, {classsr['psnr']:.2f} dB",
            f"{classsr['time_ratio']:.2f}x, {classsr['psnr_vs_peer']:+.2f} dB",
            f"{base['time_ratio']:.2f}x, {base['psnr_vs_peer']:+.2f} dB",
            "-" if onnx is None else f"{onnx['time_ratio']:.2f}x, {onnx['psnr_vs_peer']:+.2f} dB",
            "-" if ratios is None else f"{ratios['time']:.2f} / {ratios['executed_flops']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fill_tables(tables: dict[str, str], files: list[Path]) -> None:
    """Put each table between `<!-- KEY -->` and `<!-- /KEY -->` wherever the files have those markers."""
    for path in files:
        text = original = path.read_text()
        for key, table in tables.items():
            start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
            if start in text and end in text:
                head, rest = text.split(start, 1)
                text = f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}"
        if text != original:
            path.write_text(text)
            print(f"updated the tables of {path}", flush=True)


# -- pictures of photos -----------------------------------------------------------------------------------


def _figure(width_px: int, height_px: int, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        kwargs.setdefault("pil_kwargs", {"quality": JPEG_QUALITY, "optimize": True})
    figure.savefig(path, dpi=figure.dpi, **kwargs)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", flush=True)


def crop_panels(
    photo: Path, at: tuple[int, int], size: int, device: str = "cpu"
) -> list[tuple[str, np.ndarray]]:
    """[(label, uint8 HR-sized crop)]: bicubic, each shipped ClassSR upscaler (not the denoisers), HR."""
    from classsr_cli.bench import make_lr
    from classsr_cli.engine import Upscaler
    from classsr_cli.imaging.bicubic import imresize
    from classsr_cli.imaging.photos import read_rgb8
    from classsr_cli.metrics import psnr
    from classsr_cli.pixels import unit_to_uint8
    from classsr_cli.weights import load_weights, shipped_families

    x, y = (v // 4 * 4 for v in at)  # on the LR grid, so the crop's LR equals the photo's LR there
    pad = 4 * CROP_CONTEXT
    hr = read_rgb8(photo)
    window = np.ascontiguousarray(hr[y - pad : y + size + pad, x - pad : x + size + pad])
    if window.shape[:2] != (size + 2 * pad, size + 2 * pad):
        raise SystemExit(f"{photo.name}: the crop at {at} with its context does not fit in the photo")
    lr = make_lr(window).astype(np.float32) / 255.0
    shown = np.s_[pad : pad + size, pad : pad + size]
    truth = window[shown]
    panels = [("Bicubic", unit_to_uint8(imresize(lr, scale=4))[shown])]
    for family in sorted(shipped_families("classsr"), key=_family_order):
        loaded = load_weights(family, kind="classsr")
        if getattr(loaded.model, "scale", 4) != 4:
            continue
        sr, _ = Upscaler(loaded.model, device).upscale_array(lr)
        panels.append((f"ClassSR-{FAMILY_NAMES.get(family, family)}", unit_to_uint8(sr)[shown]))
    labelled = [(f"{name}  {psnr(image, truth, border=0):.2f} dB", image) for name, image in panels]
    return labelled + [("HR (the photo)", truth)]


def draw_crop(panels: list[tuple[str, np.ndarray]], path: Path, zoom: int = CROP_ZOOM) -> None:
    """The panels side by side at `zoom`x nearest neighbour, each with its label above it."""
    side = panels[0][1].shape[0] * zoom
    gap, label_h = 8, 26
    width = len(panels) * side + (len(panels) - 1) * gap
    figure = _figure(width, side + label_h)
    for index, (label, image) in enumerate(panels):
        big = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
        left = index * (side + gap)
        figure.figimage(big, xo=left, yo=0, origin="upper")  # unresampled: one image pixel per figure pixel
        figure.text(
            (left + side / 2) / width, 1 - 4 / (side + label_h), label, ha="center", va="top", size=11
        )
    _save(figure, path)


def class_map(photo: Path, family: str | None, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """(class map as uint8 RGB, legend facts) of the photo's LR, drawn as `upscale --class-map` does."""
    from classsr_cli.api import default_model
    from classsr_cli.bench import make_lr
    from classsr_cli.engine import Upscaler
    from classsr_cli.engine.pipeline import ClassGrid
    from classsr_cli.imaging import read_image, write_image
    from classsr_cli.imaging.classmap import write_class_map
    from classsr_cli.imaging.photos import read_rgb8
    from classsr_cli.weights import load_weights

    family = family or default_model()
    hr = read_rgb8(photo)
    lr = make_lr(np.ascontiguousarray(hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]))
    engine = Upscaler(load_weights(family, kind="classsr").model, device)
    grid, tally = ClassGrid(), engine.new_tally()
    strips = engine.stream(
        lr.shape[0],
        lr.shape[1],
        [(0, lr.astype(np.float32) / 255.0)],
        tally=tally,
        on_tiles=lambda count, classes, rows, cols: grid.add(count, classes, rows, cols),
    )
    for _ in strips:  # the output itself is not needed, only the routing it took
        pass
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "lr.png", Path(folder) / "map.png"
        write_image(source, lr, bit_depth=8)
        write_class_map(source, target, grid.as_array(), grid.rows, grid.cols, engine.num_classes)
        picture = (read_image(target)[:, :, :3] * 255 + 0.5).astype(np.uint8)
    facts = {
        "family": FAMILY_NAMES.get(family, family),
        "widths": [branch.width for branch in engine.branches],
        "fractions": tally.fractions(),
        "flops_ratio": tally.flops_ratio(engine.plan),
        "lr_size": (lr.shape[1], lr.shape[0]),
    }
    return picture, facts


def draw_class_map(picture: np.ndarray, facts: dict, path: Path, long_side: int = 960) -> None:
    from matplotlib.patches import Patch

    from classsr_cli.imaging.classmap import class_colours

    height, width = picture.shape[:2]
    if max(height, width) > long_side:  # small enough for a README; the tiles stay visible
        import cv2

        factor = long_side / max(height, width)
        picture = cv2.resize(
            picture, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA
        )
        height, width = picture.shape[:2]
    legend_h = 60
    figure = _figure(width, height + legend_h)
    figure.figimage(picture, xo=0, yo=legend_h, origin="upper")
    names = ["simple", "medium", "hard"] if len(facts["widths"]) == 3 else [None] * len(facts["widths"])
    handles = [
        Patch(
            color=colour,
            label=f"{name or f'class {index + 1}'} (branch {index + 1}, width {width_}): {share:.0%} of tiles",  # noqa: E501
        )
        for index, (colour, name, width_, share) in enumerate(
            zip(class_colours(len(facts["widths"])), names, facts["widths"], facts["fractions"], strict=True)
        )
    ]
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        frameon=False,
        fontsize=9,
        handlelength=1.2,
        columnspacing=1.2,
        bbox_to_anchor=(0.5, 22 / (height + legend_h)),
    )
    lr_w, lr_h = facts["lr_size"]
    figure.text(
        0.5,
        4 / (height + legend_h),
        f"ClassSR-{facts['family']} on the {lr_w}x{lr_h} LR of a validation photo: "
        f"{facts['flops_ratio']:.0%} of the base network's FLOPs",
        ha="center",
        va="bottom",
        size=10,
    )
    _save(figure, path)


# -- plots of measurements --------------------------------------------------------------------------------


def _point(axes, flops: float, psnr: float, label: str, colour: str, classsr: bool) -> None:
    """A ClassSR model (circle, label upper left) or a base network (square, label lower right)."""
    axes.scatter(flops, psnr, color=colour, marker="o" if classsr else "s", zorder=3)
    offset, align = ((-6, 5), "right") if classsr else ((6, -11), "left")
    axes.annotate(label, (flops, psnr), textcoords="offset points", xytext=offset, ha=align, size=8)


def draw_psnr_flops(documents: list[dict], path: Path) -> None:
    """Left: the bench files' models on their data; right: the paper's Test8K points. Same FLOPs axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ours, paper = figure.subplots(1, 2, sharex=True)
    dataset, images, bicubic_psnr = None, 0, None
    for document in documents:
        family = FAMILY_NAMES.get(document["family"], document["family"])
        colour = FAMILY_COLOURS.get(family, "tab:gray")
        rows = [row for row in document["rows"] if row["flops"] is not None and row["kind"] != "budget"]
        rows.sort(key=lambda row: row["flops"])
        ours.plot([r["flops"] for r in rows], [r["psnr"] for r in rows], color=colour, alpha=0.5)
        for row in rows:
            _point(ours, row["flops"], row["psnr"], row["name"], colour, classsr=row["kind"] == "classsr")
        # bicubic sits far below the networks: drawn, it would flatten the differences that matter
        bicubic = next((row for row in document["rows"] if row["kind"] == "bicubic"), None)
        if bicubic is not None:
            bicubic_psnr = bicubic["psnr"]
        dataset, images = document["dataset"], document["images"]
    for family, points in PAPER_TEST8K.items():
        colour = FAMILY_COLOURS[family]
        (psnr_o, flops_o), (psnr_c, flops_c) = points["-O"], points["ClassSR"]
        paper.plot([flops_c, flops_o], [psnr_c, psnr_o], color=colour, alpha=0.5)
        _point(paper, flops_o, psnr_o, f"{family}-O", colour, classsr=False)
        _point(paper, flops_c, psnr_c, f"ClassSR-{family}", colour, classsr=True)
    title = f"shipped models, {images} validation photos ({dataset})" if dataset else "shipped models"
    ours.set_title(title + (f"\nbicubic: {bicubic_psnr:.2f} dB" if bicubic_psnr is not None else ""), size=10)
    paper.set_title(
        "the paper, Test8K (its Table 2)\nnot the same photos: compare the shapes, not the levels", size=10
    )
    for axes in (ours, paper):
        axes.set_xscale("log")
        axes.margins(x=0.12, y=0.12)  # room for the labels at the ends
        axes.set_xlabel("FLOPs per 32x32 LR sub-image (paper convention)")
        axes.grid(alpha=0.3, which="both")
        axes.ticklabel_format(axis="y", useOffset=False)
    low, high = ours.get_xlim()  # shared: the cheapest ClassSR's label, left of it, needs room there
    ours.set_xlim(low / 4, high)
    ours.set_ylabel("PSNR, RGB (dB)")
    ours.scatter([], [], color="black", marker="s", label="base network (-O)")
    ours.scatter([], [], color="black", marker="o", label="ClassSR")
    ours.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def draw_speed(report: dict, path: Path) -> None:
    """Per family: seconds of each row of plain_peer against the plain network's (the first row)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families = report["families"]
    rows = sum(len(peer_rows(table)) for table in families.values())
    figure = Figure(figsize=(9, 0.5 * rows + 1.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    labels, ratios, colours, notes = [], [], [], []
    for family, table in families.items():
        colour = FAMILY_COLOURS.get(FAMILY_NAMES.get(family, family), "tab:gray")
        for name, entry in peer_rows(table).items():
            labels.append(name)
            ratios.append(entry["time_ratio"])
            colours.append(colour)
            extra = f", {entry['flops_ratio']:.0%} of the FLOPs" if "flops_ratio" in entry else ""
            notes.append(f"{entry['seconds']:.2f} s, {entry['psnr_vs_peer']:+.2f} dB{extra}")
    positions = np.arange(len(labels))[::-1]
    axes.barh(positions, ratios, color=colours, alpha=0.8)
    axes.axvline(1.0, color="black", linewidth=1)
    for position, ratio, note in zip(positions, ratios, notes, strict=True):
        axes.text(ratio, position, f"  {ratio:.2f}x  ({note})", va="center", size=8)
    axes.set_yticks(positions, labels, size=9)
    axes.set_xlim(0, max(ratios) * 1.9)
    axes.set_xlabel("wall time against the plain network in 64-px tiles (1.0); PSNR against it")
    threads = report.get("threads")
    axes.set_title(
        f"{report.get('crop', '')} central crops of the validation photos, {report.get('device', '')}"
        + (f", {threads} threads" if threads else ""),
        size=10,
    )
    axes.grid(alpha=0.3, axis="x")
    _save(figure, path)


# -- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, help="folder of the validation photos")
    parser.add_argument("--photo", default=PHOTO, help="file name in --photos for the crop and the class map")
    parser.add_argument("--crop-at", default=",".join(map(str, CROP_AT)), help="HR x,y of the crop's corner")
    parser.add_argument("--crop-size", type=int, default=CROP_SIZE)
    parser.add_argument("--classmap-model", help="family routing the class map (default: best shipped)")
    parser.add_argument("--bench", type=Path, nargs="*", default=[], help="`classsr bench --json` outputs")
    parser.add_argument("--peer", type=Path, help="output of `python -m benchmarks.plain_peer`")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", default="crop,classmap,flops,speed", help="which pictures to make")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--tables", action="store_true", help="also write the tables into README.md and docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    tables = {}
    wanted = set(args.only.split(","))
    photo = args.photos / args.photo if args.photos else None
    if photo is not None and not photo.is_file():
        raise SystemExit(f"no photo {photo}")
    if photo is not None and "crop" in wanted:
        at = tuple(int(v) for v in args.crop_at.split(","))
        draw_crop(crop_panels(photo, at, args.crop_size, args.device), args.out / "crop.jpg")
    if photo is not None and "classmap" in wanted:
        picture, facts = class_map(photo, args.classmap_model, args.device)
        draw_class_map(picture, facts, args.out / "classmap.jpg")
    if args.bench:
        documents = read_bench(args.bench)
        if "flops" in wanted:
            draw_psnr_flops(documents, args.out / "psnr-flops.png")
        tables["results"], tables["results-full"] = (
            results_table(documents),
            results_table(documents, full=True),
        )
    if args.peer is not None:
        report = last_json_document(args.peer.read_text())
        if "speed" in wanted:
            draw_speed(report, args.out / "speed.png")
        tables["plain-peer"] = peer_table(report)
        tables["plain-peer-short"] = peer_short_table(report)
        tables["plain-peer-settings"] = peer_settings(report)
    for key, table in tables.items():
        print(f"{key}:\n{table}\n")
    if args.tables:
        fill_tables(tables, [ROOT / "README.md", ROOT / "docs" / "benchmarks.md"])


if __name__ == "__main__":
    main()
