import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from classsr_cli.errors import WeightsError
from classsr_cli.imaging import write_image
from classsr_cli.models import create, create_base
from classsr_cli.weights import (
    add_to_manifest,
    load_weights,
    read_manifest,
    read_metadata,
    save_model,
    shipped_entry,
)

LAYOUTS = Path(__file__).parent / "data" / "official"


def official_state_dict(family: str) -> dict:
    """Random tensors in exactly the official checkpoint's layout (keys and shapes)."""
    state = {}
    generator = torch.Generator().manual_seed(0)
    for line in (LAYOUTS / f"official-{family}-state-dict.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape_text = line.split("\t")
        shape = tuple(int(n) for n in re.findall(r"\d+", shape_text))
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.01
    return state


@pytest.mark.parametrize("family", ["fsrcnn", "carn", "srresnet", "rcan"])
def test_official_layout_loads_strictly(tmp_path, family):
    state = official_state_dict(family)
    path = tmp_path / "official.pth"
    torch.save(state, path)
    loaded = load_weights(path)
    assert (loaded.family, loaded.kind) == (family, "classsr")
    model_state = loaded.model.state_dict()
    assert set(model_state) == set(state)
    for key, tensor in state.items():
        assert torch.equal(model_state[key].to(tensor.dtype), tensor), key


def test_official_single_network_and_wrapped_checkpoints(tmp_path):
    state = {
        k[len("net3.") :]: v for k, v in official_state_dict("srresnet").items() if k.startswith("net3.")
    }
    torch.save({"params": state}, tmp_path / "msrresnet.pth")
    loaded = load_weights(tmp_path / "msrresnet.pth")
    assert (loaded.family, loaded.kind, loaded.model.width) == ("srresnet", "base", 64)
    with pytest.raises(WeightsError, match="not carn"):
        load_weights(tmp_path / "msrresnet.pth", family="carn")


def test_layout_mismatch_is_refused(tmp_path):
    state = official_state_dict("fsrcnn")
    del state["net2.tail_conv.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="missing"):
        load_weights(tmp_path / "broken.pth")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


def test_malicious_pickle_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"net1.head_conv.0.weight": _RunsCode()}, handle)
    with pytest.raises(WeightsError, match="refused"):
        load_weights(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_safetensors_round_trip_and_fp16(tmp_path):
    torch.manual_seed(0)
    model = create("carn").eval()
    path = save_model(model, tmp_path / "carn.safetensors", "carn")
    loaded = load_weights(path)
    assert loaded.model.widths == [36, 52, 64]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.net2(x), loaded.model.net2(x))
    half = save_model(create_base("fsrcnn"), tmp_path / "base.safetensors", "fsrcnn", dtype=torch.float16)
    loaded = load_weights(half)
    assert loaded.kind == "base" and next(loaded.model.parameters()).dtype == torch.float32


def test_manifest_sha256_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSSR_WEIGHTS", str(tmp_path))
    path = save_model(create("fsrcnn"), tmp_path / "classsr-fsrcnn.safetensors", "fsrcnn")
    entry = add_to_manifest(path, {"iterations": 10})
    assert entry["sha256"] and entry["widths"] == [16, 36, 56]
    assert shipped_entry("fsrcnn")["file"] == "classsr-fsrcnn.safetensors"
    assert load_weights("fsrcnn").entry["iterations"] == 10
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip one bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_weights("fsrcnn")
    with pytest.raises(WeightsError, match="no shipped"):
        load_weights("rcan")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["models"][0]["family"] == "fsrcnn"


@pytest.mark.parametrize("content", [b"", b"not a weights file at all", b"\xff" * 64])
def test_corrupt_files_are_refused(tmp_path, content):
    for suffix in (".safetensors", ".pth"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(WeightsError):
            load_weights(path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nothing.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights type"):
        load_weights(tmp_path / "w.onnx")


def test_weights_add_and_list_commands(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from classsr_cli.cli import app

    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("CLASSSR_WEIGHTS", str(folder))
    trained = save_model(create("fsrcnn"), tmp_path / "final.safetensors", "fsrcnn")
    (tmp_path / "facts.json").write_text(json.dumps({"iterations": 1234, "val_psnr": 30.5}))
    runner = CliRunner()
    args = ["weights", "add", str(trained), "--name", "classsr-fsrcnn.safetensors", "--half", "--json"]
    result = runner.invoke(app, [*args, "--provenance", str(tmp_path / "facts.json")])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["dtype"] == "float16" and entry["iterations"] == 1234
    assert load_weights("fsrcnn").entry["val_psnr"] == 30.5  # found as the shipped fsrcnn model
    listed = json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)
    assert [m["file"] for m in listed["models"]] == ["classsr-fsrcnn.safetensors"]
    assert runner.invoke(app, args).exit_code == 2  # exists: needs --overwrite
    # what training wrote into the file goes with it: into the copy and its manifest entry
    ledger = {"iteration": 300, "recipe": {"family": "fsrcnn"}}
    staged = save_model(
        create("fsrcnn"), tmp_path / "staged.safetensors", "fsrcnn", stage="3", ledger=json.dumps(ledger)
    )
    added = runner.invoke(app, ["weights", "add", str(staged), "--name", "staged.safetensors", "--json"])
    assert json.loads(added.stdout)["training"] == {"stage": 3, "ledger": ledger}
    copied = read_metadata(folder / "staged.safetensors")
    assert copied["stage"] == "3" and json.loads(copied["ledger"]) == ledger


def test_added_weights_go_to_the_user_folder_and_come_before_the_shipped(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from classsr_cli.cli import app
    from classsr_cli.weights import read_manifest, weights_dir

    monkeypatch.delenv("CLASSSR_WEIGHTS", raising=False)
    monkeypatch.setenv("CLASSSR_USER_WEIGHTS", str(tmp_path / "user"))
    shipped = sorted(p.name for p in weights_dir().iterdir())
    shipped_manifest = read_manifest()
    trained = save_model(create("fsrcnn", widths=[4, 8, 12]), tmp_path / "final.safetensors", "fsrcnn")
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "add", str(trained), "--name", "classsr-fsrcnn.safetensors"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "user").iterdir()) == [
        "classsr-fsrcnn.safetensors",
        "manifest.json",
    ]
    assert sorted(p.name for p in weights_dir().iterdir()) == shipped and read_manifest() == shipped_manifest
    loaded = load_weights("fsrcnn")  # the user's, listed after the shipped one of the same family and kind
    assert loaded.source.parent == tmp_path / "user" and loaded.model.widths == [4, 8, 12]
    listed = json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)
    assert listed["folders"] == {"shipped": str(weights_dir()), "user": str(tmp_path / "user")}
    assert [m["origin"] for m in listed["models"]][-1] == "user"
    assert "shipped (read-only)" in runner.invoke(app, ["weights", "list"]).stderr
    # a run says so: the user's weights, not the shipped ones, answer to --model fsrcnn
    from classsr_cli.api import load_network

    _, notes = load_network("fsrcnn")
    assert notes == [
        f"your weights {tmp_path / 'user' / 'classsr-fsrcnn.safetensors'} run (added with `classsr weights "
        "add`), not the shipped ones"
    ]
    assert load_network("carn")[1] == []  # no weights of the user's for carn: the shipped ones, no note
    assert load_network("fsrcnn", weights=weights_dir() / "classsr-fsrcnn.safetensors")[1] == []  # a file
    # a model nothing is shipped for: the user's weights run, and the note says only that
    rcan = save_model(create("rcan", widths=[16, 24]), tmp_path / "rcan.safetensors", "rcan")
    assert runner.invoke(app, ["weights", "add", str(rcan), "--name", "my-rcan.safetensors"]).exit_code == 0
    assert load_network("rcan")[1] == [
        f"your weights {tmp_path / 'user' / 'my-rcan.safetensors'} run (added with `classsr weights add`)"
    ]
    write_image(tmp_path / "in.png", np.full((8, 8, 3), 0.5, np.float32))
    result = runner.invoke(
        app, ["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "-m", "fsrcnn"]
    )
    assert result.exit_code == 0, result.output
    assert "your weights" in " ".join(result.stderr.split())


def test_weights_list_gives_the_validation_psnr_after_the_latest_fine_tune():
    from classsr_cli.weights import latest_flops_ratio, latest_val_psnr

    assert latest_val_psnr({"val_psnr": 37.0}) == 37.0
    assert latest_val_psnr({"val_psnr": 37.0, "smooth_fine_tune": {"val_psnr_default_engine": 37.3}}) == 37.3
    assert latest_val_psnr({}) is None
    # a new Class-Module measured after the fine-tune: its figure is the latest
    later = {"val_psnr": 37.0, "smooth_fine_tune": {"val_psnr_default_engine": 37.3}}
    later["val_psnr_default_engine"] = 37.2
    assert latest_val_psnr(later) == 37.2
    assert latest_flops_ratio({"flops_ratio": 0.68}) == 0.68
    assert latest_flops_ratio({"flops_ratio": 0.68, "flops_ratio_default_engine": 0.64}) == 0.64


def test_weights_list_shows_every_file_name_whole_in_80_columns():
    from typer.testing import CliRunner

    from classsr_cli.cli import app

    result = CliRunner().invoke(app, ["weights", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "─" in line) - 1 :]  # the folders' paths run on
    assert max(len(line) for line in table) <= 80
    for entry in read_manifest()["models"]:
        assert entry["file"] in result.output  # the name to pass to --weights, never cut with an ellipsis


def test_weights_list_piped_keeps_each_row_on_one_line():
    """Without a terminal and without COLUMNS (a pipe, a file), each row is one line, for grep."""
    from typer.testing import CliRunner

    from classsr_cli.cli import app
    from classsr_cli.cli.weights import _compact

    result = CliRunner().invoke(app, ["weights", "list"], env={"COLUMNS": None})
    assert result.exit_code == 0, result.output
    for entry in read_manifest()["models"]:
        row = next(line for line in result.output.splitlines() if entry["file"] in line)
        assert _compact(entry.get("iterations", "-")) in row and entry["family"] in row


def test_iteration_counts_read_as_thousands_to_one_decimal():
    from classsr_cli.cli.weights import _compact

    assert [_compact(n) for n in (999, 1000, 13185, 23500, 60000)] == ["999", "1k", "13.2k", "23.5k", "60k"]
    assert _compact({"a": 16066, "b": 3000}) == "16.1k/3k"


def test_branches_cut_from_the_widest_are_stored_once(tmp_path):
    """Branches that are the widest one's leading channels (a slimmable network's) are not stored again:
    the file holds the widest and loads the same model; branches trained apart are all stored."""
    from safetensors import safe_open

    from classsr_cli.train.slim_network import Slimmable

    torch.manual_seed(0)
    slimmable = Slimmable("srresnet", [8, 12, 16])
    model = create("srresnet", [8, 12, 16])
    for width, branch in zip(slimmable.widths, model.branches, strict=True):
        branch.load_state_dict(slimmable.cut(width).state_dict())
    cut = save_model(model, tmp_path / "cut.safetensors", "srresnet", dtype=torch.float16)
    apart = save_model(create("srresnet", [8, 12, 16]), tmp_path / "apart.safetensors", "srresnet")
    with safe_open(str(cut), framework="pt") as handle:
        assert not any(key.startswith(("net1.", "net2.")) for key in handle.keys())
        assert json.loads(handle.metadata()["sliced_branches"]) == ["net1", "net2"]
    with safe_open(str(apart), framework="pt") as handle:
        assert any(key.startswith("net1.") for key in handle.keys())
        assert "sliced_branches" not in handle.metadata()
    loaded = load_weights(cut).model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value.half().float()), key
    from safetensors.torch import load_file, save_file

    for named in ('["net3"]', '["classifier"]', '"net1"', "[net1"):  # the widest, not a branch, no list
        bad = tmp_path / "bad.safetensors"
        save_file(load_file(str(cut)), str(bad), metadata={**read_metadata(cut), "sliced_branches": named})
        with pytest.raises(WeightsError, match="malformed metadata"):
            load_weights(bad)
    added = tmp_path / "user"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLASSSR_WEIGHTS", str(added))
        from classsr_cli.weights import add_weights

        entry = add_weights(cut, "again.safetensors")  # copied as it was: still once, nothing else recorded
    assert "training" not in entry and load_weights(added / "again.safetensors").model.widths == [8, 12, 16]
    narrow = sum(p.numel() for branch in model.branches[:-1] for p in branch.state_dict().values())
    saved = apart.stat().st_size - (added / "again.safetensors").stat().st_size  # fp32 both
    assert 4 * narrow <= saved < 4 * narrow + 32768  # their bytes, and their lines in the header
