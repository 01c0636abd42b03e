"""Export a ClassSR model for other runtimes: the Class-Module and each branch as an ONNX graph.

`classsr export --format onnx DIR` writes into DIR:
- `classifier.onnx`: the Class-Module, input `lr` (batch, 3, 32, 32), output `logits` (batch, M);
- `branch1.onnx` ... `branchM.onnx` (simple -> hard): input `lr` (batch, 3, height, width), output `sr`
  (batch, 3, 4*height, 4*width); any height and width, so that a runtime can run regions, not only tiles;
- `classsr.json`: family, scale, classes, widths, each graph's file, names and shapes, FLOPs per 32x32
  sub-image, the routing rule and the value range (RGB float32 NCHW in [0, 1]).

Graphs are opset 17 with a dynamic batch axis, made by PyTorch's TorchScript-based exporter (deprecated
since torch 2.9, still in 2.13): it needs only the `onnx` package (the `onnx` extra) and exports a branch
in a fraction of a second. The torch.export-based exporter matched PyTorch as closely (about 1e-6) but
also needs onnxscript, took seconds per branch and wrote larger files. Batch norms are folded into their
convolutions first (CARN-M's fusion blocks). FSRCNN's transposed convolution is kept: the engine's
sub-pixel rewrite ran no faster in onnxruntime on a CPU and multiplies more zeros.

Everything is written into a hidden folder beside DIR and moved into place at the end, `classsr.json`
last: an interrupted export leaves no partial file in DIR.
"""

import copy
import inspect
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from classsr_cli.errors import OVERWRITE_HINT, DependencyError, ModelError, OutputError
from classsr_cli.files import new_file_mode, write_json
from classsr_cli.models import ClassSR, get_family

FORMATS = ("onnx",)
# opset 17 came with ONNX 1.12 (2022): current onnxruntime, TensorRT and ncnn converters all read it
OPSET = 17
MANIFEST_NAME = "classsr.json"
MANIFEST_FORMAT = "classsr-export-1"
INPUT_NAME = "lr"
CLASSIFIER_OUTPUT = "logits"
BRANCH_OUTPUT = "sr"


def class_names(count: int) -> list[str]:
    """Names of `count` classes, simple -> hard: simple, medium, hard for 3; medium1, medium2 ... for more."""
    if count == 2:
        return ["simple", "hard"]
    middle = ["medium"] if count == 3 else [f"medium{i}" for i in range(1, count - 1)]
    return ["simple", *middle, "hard"]


def check_target(out_dir: Path, overwrite: bool = False, format: str = "onnx") -> None:
    """Refuse an unknown format, an output folder that is a file, or one that holds anything unless
    `overwrite` (OutputError). Cheap: callers check before loading a model."""
    if format not in FORMATS:
        raise OutputError(f"unknown export format '{format}': choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file: the export needs a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"{out_dir} is not empty: {OVERWRITE_HINT} to write the export into it")


def export(
    model: ClassSR,
    family: str,
    out_dir: Path,
    *,
    format: str = "onnx",
    overwrite: bool = False,
    source: Path | None = None,
) -> dict:
    """Write `model` into `out_dir` in `format` (only "onnx" so far) and return the `classsr.json` document.

    `source`, the weights file the model came from, is recorded by name and sha256. Raises OutputError
    (unknown format, folder not writable, or not empty without `overwrite`), ModelError (not a ClassSR
    model) and DependencyError (the `onnx` package is missing).
    """
    check_target(out_dir, overwrite, format)
    return export_onnx(model, family, out_dir, overwrite=overwrite, source=source)


def export_onnx(
    model: ClassSR,
    family: str,
    out_dir: Path,
    *,
    overwrite: bool = False,
    source: Path | None = None,
    opset: int = OPSET,
) -> dict:
    """The Class-Module and every branch of `model` as ONNX graphs, plus `classsr.json`, in `out_dir`.

    Files already in `out_dir` (with `overwrite`) are kept unless the export writes one of the same name.
    Returns the `classsr.json` document. Errors as `export`.
    """
    if not isinstance(model, ClassSR):
        raise ModelError("only a ClassSR model (Class-Module and branches) can be exported, not one network")
    if opset < OPSET:
        raise ModelError(f"ONNX opset {opset} is too old: {OPSET} or newer")
    try:
        import onnx
    except ImportError:
        raise DependencyError(
            "exporting to ONNX needs the onnx package: pip install 'classsr[onnx]' (or pip install onnx)"
        ) from None
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    family = get_family(family).name
    model = copy.deepcopy(model).float().cpu().eval()
    graph = _inference_copy(model)
    names = class_names(model.num_classes)
    document = _describe(model, family, names, opset, source)

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial"))
    except OSError as error:
        raise OutputError(f"cannot write into {out_dir.parent}: {error.strerror or error}") from None
    try:
        jobs = [(graph.classifier, document["classifier"], "classifier", None)]
        jobs += [
            (branch, entry, "branch", entry["class"])
            for branch, entry in zip(graph.branches, document["branches"], strict=True)
        ]
        for module, entry, role, name in jobs:
            path = staging / entry["file"]
            _export_graph(module, entry, path, opset)
            _annotate(onnx, path, family, role, name, model.scale)
        write_json(staging / MANIFEST_NAME, document)
        _publish(staging, out_dir, [entry["file"] for _, entry, _, _ in jobs])
    except OSError as error:
        raise OutputError(f"cannot write the export to {out_dir}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return document


def _inference_copy(model: ClassSR) -> ClassSR:
    from classsr_cli.engine.inference_graph import optimize_for_inference

    return optimize_for_inference(copy.deepcopy(model), subpixel=False)


def _describe(model: ClassSR, family: str, names: list[str], opset: int, source: Path | None) -> dict:
    from classsr_cli import __version__
    from classsr_cli.engine.tiling import PATCH, STRIDE
    from classsr_cli.engine.upscaler import context_for
    from classsr_cli.engine.workspace import FADE
    from classsr_cli.flops import measure

    scale, classes = model.scale, model.num_classes
    context = context_for(model.branches)
    finish = ", then one back-projection step" if scale > 1 else ""
    classifier_cost = measure(model.classifier)
    branches = []
    for index, (branch, name) in enumerate(zip(model.branches, names, strict=True), start=1):
        cost = measure(branch)
        branches.append(
            {
                "class": name,
                "width": branch.width,
                "file": f"branch{index}.onnx",
                "input": {"name": INPUT_NAME, "shape": ["batch", 3, "height", "width"]},
                "output": {
                    "name": BRANCH_OUTPUT,
                    "shape": ["batch", 3, *(f"{d}_x{scale}" for d in ("height", "width"))],
                },
                "params": cost.params,
                "flops": cost.flops,
                "executed_flops": cost.executed_flops,
            }
        )
    weights = None
    if source is not None:
        from classsr_cli.weights import sha256_of

        weights = {"file": Path(source).name, "sha256": sha256_of(Path(source))}
    return {
        "format": MANIFEST_FORMAT,
        "classsr_version": __version__,
        "family": family,
        "title": f"ClassSR-{get_family(family).title}",
        "scale": scale,
        "weights": weights,
        "onnx_opset": opset,
        "values": {
            "layout": "NCHW",
            "dtype": "float32",
            "channels": "RGB",
            "range": [0.0, 1.0],
            "note": "inputs in [0, 1]; outputs are not clamped: clip them to [0, 1] after stitching",
        },
        "classes": names,
        "widths": model.widths,
        "classifier": {
            "file": "classifier.onnx",
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, PATCH, PATCH]},
            "output": {"name": CLASSIFIER_OUTPUT, "shape": ["batch", classes]},
            "params": classifier_cost.params,
            "flops": classifier_cost.flops,
            "executed_flops": classifier_cost.executed_flops,
        },
        "branches": branches,
        "flops_note": (
            f"per {PATCH}x{PATCH} LR sub-image. flops: the paper's convention (2 x multiply-adds of every "
            "convolution and linear layer; a transposed convolution charged per output pixel); "
            "executed_flops: what the graph multiplies (a transposed convolution per input pixel)"
        ),
        "routing": {
            "rule": (
                f"class = argmax of the Class-Module's logits over a {PATCH}x{PATCH} LR sub-image "
                "(RGB in [0, 1]); class i runs branches[i]"
            ),
            "patch": PATCH,
            "stride": STRIDE,
            "grid": (
                f"sub-images every {STRIDE} LR pixels from the top-left corner; where that grid falls short, "
                "one more row (column) flush with the bottom (right) edge; an image narrower or lower than "
                f"{PATCH} is first reflect-padded to {PATCH}"
            ),
            "paper_mode": (
                f"each sub-image runs alone through its branch; the {PATCH * scale}x{PATCH * scale} outputs "
                "are averaged uniformly where they overlap (the paper's; `classsr upscale --tiling paper`)"
            ),
            "region_mode": (
                "the default of `classsr upscale`: same-class sub-images' cells run together through their "
                f"branch as larger regions with {context} LR pixels of real context around them, cross-faded "
                f"over {2 * FADE} LR pixels where classes meet{finish}; see the "
                "README and classsr_cli/engine/upscaler.py"
            ),
            "context": context,
            "fade": FADE,
        },
    }


def _export_graph(module: nn.Module, entry: dict, path: Path, opset: int) -> None:
    input_name, output_name = entry["input"]["name"], entry["output"]["name"]
    dynamic = {
        input_name: {i: d for i, d in enumerate(entry["input"]["shape"]) if isinstance(d, str)},
        output_name: {i: d for i, d in enumerate(entry["output"]["shape"]) if isinstance(d, str)},
    }
    example = torch.rand(2, 3, *(d if isinstance(d, int) else 32 for d in entry["input"]["shape"][2:]))
    options = {}
    # torch 2.9+ defaults to the torch.export-based exporter (it needs onnxscript); older ones lack the flag
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is no user's concern
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes=dynamic,
            opset_version=opset,
            **options,
        )


def _annotate(onnx, path: Path, family: str, role: str, name: str | None, scale: int) -> None:
    """Check the graph and record what it is in its metadata (runtimes and viewers such as Netron show it)."""
    from classsr_cli import __version__

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    props = {"classsr.family": family, "classsr.role": role, "classsr.scale": str(scale)}
    props["classsr.version"] = __version__
    if name is not None:
        props["classsr.class"] = name
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def _publish(staging: Path, out_dir: Path, graphs: list[str]) -> None:
    """Move the finished export into `out_dir`: the whole folder when there is none, else file by file."""
    if not out_dir.exists():
        os.chmod(staging, new_file_mode(folder=True))  # mkdtemp makes 0700; as readable as any new folder
        os.rename(staging, out_dir)
        return
    # an old manifest goes first, so that a folder caught half replaced lists no graphs at all
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for name in [*graphs, MANIFEST_NAME]:
        os.replace(staging / name, out_dir / name)
