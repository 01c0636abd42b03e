"""`classsr export`: graphs that onnxruntime runs as torch does, classsr.json, the docs' example, refusals."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from classsr_cli import export as exporting
from classsr_cli.cli import app
from classsr_cli.engine import Upscaler
from classsr_cli.errors import DependencyError, ModelError, OutputError
from classsr_cli.flops import classsr_costs
from classsr_cli.models import create, create_base
from classsr_cli.weights import load_weights, save_model

runner = CliRunner()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "export.md"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install -e '.[onnx]')")
    return pytest.importorskip("onnxruntime", reason="running the graphs needs onnxruntime (the onnx extra)")


def tiny_fsrcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("fsrcnn", widths=[4, 8, 12]).eval()
    for branch in model.branches:  # the initial tail (std 0.001) would make every output nearly 0
        torch.nn.init.normal_(branch.tail_conv.weight, std=0.1)
        branch.tail_conv.bias.data.fill_(0.5)
    return with_sensitive_classifier(model)


def with_sensitive_classifier(model):
    """A fresh Class-Module's logits barely depend on the picture (small weights at the start of training);
    larger ones make different pictures go to different classes."""
    for layer in model.classifier.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight, a=0.1, nonlinearity="leaky_relu")
            torch.nn.init.normal_(layer.bias, std=0.1)
    return model


def tiny_carn() -> torch.nn.Module:
    torch.manual_seed(1)
    model = create("carn", widths=[4, 8, 12]).eval()
    for module in model.modules():  # statistics far from (0, 1), so that folding them is really tested
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.3, 3)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return with_sensitive_classifier(model)


def graph_inputs(entry: dict) -> list[tuple[int, ...]]:
    """Batch 1 and 3 at 32x32, and for a branch a region of another size."""
    shapes = [(1, 3, 32, 32), (3, 3, 32, 32)]
    if entry["input"]["shape"][2] == "height":
        shapes.append((2, 3, 20, 44))
    return shapes


def largest_difference(ort, model, document: dict, folder: Path) -> float:
    """Run every exported graph with onnxruntime and return its largest deviation from the torch model."""
    torch.manual_seed(2)
    worst = 0.0
    pairs = [(document["classifier"], model.classifier)]
    pairs += list(zip(document["branches"], model.branches, strict=True))
    for entry, module in pairs:
        session = ort.InferenceSession(str(folder / entry["file"]), providers=["CPUExecutionProvider"])
        for shape in graph_inputs(entry):
            x = torch.rand(shape)
            with torch.no_grad():
                expected = module(x).numpy()
            assert expected.std() > 0.01, "outputs this flat would hide any difference"
            (got,) = session.run([entry["output"]["name"]], {entry["input"]["name"]: x.numpy()})
            assert got.shape == expected.shape
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@pytest.mark.parametrize("build", [tiny_fsrcnn, tiny_carn], ids=["fsrcnn", "carn"])
def test_every_graph_matches_torch_at_any_batch_and_region_size(ort, build, tmp_path):
    model = build()
    family = "carn" if "carn" in build.__name__ else "fsrcnn"
    document = exporting.export(model, family, tmp_path / "out")
    assert largest_difference(ort, model, document, tmp_path / "out") <= TOLERANCE


@pytest.mark.parametrize("family", ["fsrcnn", "carn"])
def test_shipped_models_export_and_match_torch(ort, family, tmp_path):
    loaded = load_weights(family, kind="classsr")
    document = exporting.export(loaded.model, family, tmp_path / family, source=loaded.source)
    assert document["weights"] == {"file": loaded.source.name, "sha256": loaded.entry["sha256"]}
    assert largest_difference(ort, loaded.model, document, tmp_path / family) <= TOLERANCE


def test_manifest_describes_the_graphs_and_the_routing(ort, tmp_path):
    import onnx

    from classsr_cli import __version__

    model = tiny_fsrcnn()
    folder = tmp_path / "out"
    document = exporting.export(model, "fsrcnn", folder)
    assert json.loads((folder / "classsr.json").read_text()) == document
    assert sorted(p.name for p in folder.iterdir()) == [
        "branch1.onnx",
        "branch2.onnx",
        "branch3.onnx",
        "classifier.onnx",
        "classsr.json",
    ]
    costs = classsr_costs(model)
    assert document["family"] == "fsrcnn" and document["scale"] == 4 and document["widths"] == [4, 8, 12]
    assert document["classes"] == ["simple", "medium", "hard"]
    assert document["classsr_version"] == __version__ and document["weights"] is None
    assert document["values"]["range"] == [0.0, 1.0] and document["values"]["layout"] == "NCHW"
    assert document["classifier"]["flops"] == costs["classifier"]["flops"]
    for entry, cost in zip(document["branches"], costs["branches"], strict=True):
        assert (entry["width"], entry["flops"], entry["executed_flops"]) == (
            cost["width"],
            cost["flops"],
            cost["executed_flops"],
        )
    routing = document["routing"]
    assert (routing["patch"], routing["stride"], routing["context"], routing["fade"]) == (32, 28, 6, 2)
    assert "argmax" in routing["rule"]

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    graphs = [(document["classifier"], "classifier")] + [(b, "branch") for b in document["branches"]]
    for entry, role in graphs:
        proto = onnx.load(str(folder / entry["file"]))
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert [i.name for i in proto.graph.input] == [entry["input"]["name"]]
        assert dims(proto.graph.input[0]) == entry["input"]["shape"]
        assert dims(proto.graph.output[0]) == entry["output"]["shape"]
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["classsr.role"] == role and props["classsr.family"] == "fsrcnn"
    assert document["classifier"]["input"]["shape"] == ["batch", 3, 32, 32]
    assert document["branches"][0]["output"]["shape"] == ["batch", 3, "height_x4", "width_x4"]


def test_a_missing_onnx_package_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an import of a package not installed meets
    with pytest.raises(DependencyError, match=r"classsr\[onnx\]"):
        exporting.export(tiny_fsrcnn(), "fsrcnn", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_class_names_run_simple_to_hard():
    assert exporting.class_names(2) == ["simple", "hard"]
    assert exporting.class_names(5) == ["simple", "medium1", "medium2", "medium3", "hard"]


def test_docs_example_reproduces_the_paper_tiling(ort, tmp_path):
    rng = np.random.default_rng(3)
    # 2 x 3 tiles, the second row flush with the bottom edge; noise fading out towards the right
    lr = (rng.random((45, 88, 3)) * np.linspace(1, 0.1, 88)[None, :, None]).astype(np.float32)
    model = tiny_fsrcnn()
    tiles = torch.stack([torch.from_numpy(lr[y : y + 32, x : x + 32]) for y in (0, 13) for x in (0, 28, 56)])
    with torch.no_grad():  # centre each logit over these tiles, so that more than one class wins somewhere
        model.classifier.lastOut.bias -= model.classifier(tiles.permute(0, 3, 1, 2)).mean(dim=0)
    exporting.export(model, "fsrcnn", tmp_path / "out")
    code = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)[0]  # the function, not its usage
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    sr, classes = namespace["classsr_x4"](lr, str(tmp_path / "out"))
    expected, tally = Upscaler(model, "cpu", "fp32", tiling="paper").upscale_array(lr)
    assert classes.shape == (2, 3)
    assert np.bincount(classes.ravel(), minlength=3).tolist() == tally.class_counts
    assert len(set(classes.ravel().tolist())) > 1, "one class everywhere would not test the routing"
    assert sr.shape == expected.shape and np.abs(sr - expected).max() <= TOLERANCE


def test_refuses_a_folder_in_use_and_cleans_up_when_interrupted(ort, tmp_path, monkeypatch):
    model = tiny_fsrcnn()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        exporting.export(model, "fsrcnn", folder)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        exporting.export(model, "fsrcnn", tmp_path / "file")
    with pytest.raises(OutputError, match="unknown export format"):
        exporting.export(model, "fsrcnn", tmp_path / "new", format="tflite")
    with pytest.raises(ModelError, match="ClassSR"):
        exporting.export(create_base("fsrcnn", 4), "fsrcnn", tmp_path / "new")

    calls = []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(exporting, "_annotate", interrupted)
    for target, overwrite in ((tmp_path / "new", False), (folder, True)):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            exporting.export(model, "fsrcnn", target, overwrite=overwrite)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]  # no staging folder left
    monkeypatch.undo()
    exporting.export(model, "fsrcnn", folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "classsr.json").is_file()


def test_cli_exports_and_refuses_an_existing_folder_with_exit_code_2(ort, tmp_path):
    weights = save_model(tiny_fsrcnn(), tmp_path / "tiny.safetensors", "fsrcnn")
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(out), "-w", str(weights), "--format", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["manifest"]["weights"]["file"] == "tiny.safetensors"
    assert report["bytes"]["branch1.onnx"] == (out / "branch1.onnx").stat().st_size > 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    refused = runner.invoke(app, ["export", str(out), "-w", str(weights)])
    assert refused.exit_code == 2
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    again = runner.invoke(app, ["export", str(out), "-w", str(weights), "--overwrite"])
    assert again.exit_code == 0, again.output
    base = save_model(create_base("fsrcnn", 4), tmp_path / "base.safetensors", "fsrcnn")
    for arguments in (["-w", str(base)], ["-w", str(weights), "--format", "tflite"], ["-m", "rcan"]):
        result = runner.invoke(app, ["export", str(tmp_path / "other"), *arguments])
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert not (tmp_path / "other").exists()
