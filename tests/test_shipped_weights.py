"""The weights in weights/: every manifest entry loads (sha256 checked) and does its job on the sample."""

import json
from importlib import resources

import numpy as np
import pytest
from typer.testing import CliRunner

from classsr_cli.cli import app
from classsr_cli.models import get_family
from classsr_cli.weights import load_weights, read_manifest, sha256_of, weights_dir

ENTRIES = read_manifest()["models"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry["file"] for entry in ENTRIES])
def test_every_manifest_entry_loads_with_its_widths_and_provenance(entry):
    path = weights_dir() / entry["file"]
    assert sha256_of(path) == entry["sha256"]
    loaded = load_weights(path)
    family = get_family(entry["family"])
    expected = list(family.widths_for(3)) if entry["kind"] == "classsr" else [family.base_width]
    assert entry["widths"] == expected and loaded.kind == entry["kind"]
    for fact in ("data", "command", "iterations", "training_seconds", "val_psnr", "flops_ratio"):
        assert fact in entry, fact


CLASSSR_FAMILIES = sorted({entry["family"] for entry in ENTRIES if entry["kind"] == "classsr"})
SR_FAMILIES = [family for family in CLASSSR_FAMILIES if get_family(family).task == "upscale"]
SAMPLE = resources.files("classsr_cli") / "samples" / "picos-de-europa.png"


@pytest.mark.parametrize("family", CLASSSR_FAMILIES)
def test_shipped_classsr_and_base_beat_bicubic_on_the_sample(family, tmp_path):
    (tmp_path / "picos.png").write_bytes(SAMPLE.read_bytes())  # the sample as HR: its x4 reduction is the LR
    result = CliRunner().invoke(app, ["bench", str(tmp_path), "--model", family, "--json"])
    assert result.exit_code == 0, result.output
    base, classsr, bicubic = json.loads(result.stdout)["rows"]
    # measured with the weights of this commit: base +0.43 (FSRCNN), +0.58 (CARN) and +1.09 dB (SRResNet)
    # over bicubic; ClassSR +0.006 dB over its base (FSRCNN), equal (CARN: every tile of the small LR goes
    # to the base), -0.022 (SRResNet);
    # denoising (the reference row is the noisy input): DnCNN-O +7.92 dB, ClassSR-DnCNN +0.11 dB over it
    assert base["psnr"] > bicubic["psnr"] + 0.3
    assert classsr["psnr"] > base["psnr"] - 0.1


@pytest.mark.parametrize("family", SR_FAMILIES)
def test_shipped_classsr_sends_the_sample_sky_to_smaller_branches(family, tmp_path):
    # the sample itself as LR (as `make demo`): 221 tiles, sky and snow among rock. The paper's tiling runs
    # every tile on the Class-Module's own choice; region tiling may run a lone easy tile on a harder
    # neighbour's piece where that executes less (tests/test_regions.py)
    out = tmp_path / "x4.png"
    arguments = ["upscale", str(SAMPLE), str(out), "--model", family, "--tiling", "paper", "--json"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # measured with the weights of this commit: FSRCNN 141 / 0 / 80 tiles at 57% of its base network's
    # FLOPs, CARN 18 / 22 / 181 at 92% (both Class-Modules learned from their branches' errors; CARN's is
    # shifted towards its hard branch, and the sample is mostly rock), SRResNet 197 / 19 / 5 at 37%
    assert sum(summary["class_counts"][:-1]) >= 20 and summary["flops_ratio"] < 0.95


DENOISERS = [entry for entry in ENTRIES if get_family(entry["family"]).task == "denoise"]


@pytest.mark.parametrize("entry", DENOISERS, ids=[entry["file"] for entry in DENOISERS])
def test_shipped_denoiser_removes_most_of_the_noise_of_the_sample(entry, tmp_path):
    import cv2

    from classsr_cli.data.noise import noisy_image
    from classsr_cli.metrics import psnr

    clean = cv2.imread(str(SAMPLE))[:, :, ::-1]
    noisy = np.round(noisy_image(clean, entry["noise_sigma"], seed=1) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "noisy.png"), noisy[:, :, ::-1])
    weights = str(weights_dir() / entry["file"])
    result = CliRunner().invoke(
        app, ["denoise", str(tmp_path / "noisy.png"), str(tmp_path / "out.png"), "--weights", weights]
    )
    assert result.exit_code == 0, result.output
    denoised = cv2.imread(str(tmp_path / "out.png"))[:, :, ::-1]
    # measured with the weights of this commit: 20.4 dB for the noisy sample, 28.4 denoised by ClassSR-DnCNN
    # and 28.3 by DnCNN-O
    assert psnr(denoised, clean, 0) > psnr(noisy, clean, 0) + 6
