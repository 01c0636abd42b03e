"""The wheel is a real package: it carries the shipped weights and runs from any folder, as installed.

The wheel and sdist are built offline from a copy of the source tree (the build backend in this environment,
no isolation, no dependencies), then the wheel is unpacked, as an installer would lay it out, and used from
another folder with the checkout out of reach.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from classsr_cli.imaging import write_image

REPO = Path(__file__).resolve().parent.parent
# what a build must not see: environments, caches, data and outputs of a working checkout
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "datasets", "runs", "out"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel, sdist) built from a copy of this checkout."""
    try:
        from setuptools import __version__ as setuptools_version
        from setuptools import build_meta  # noqa: F401
    except ImportError:
        pytest.skip("setuptools is not installed, so no wheel can be built here")
    if int(setuptools_version.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools_version} predates the SPDX license field (77)")
    root = tmp_path_factory.mktemp("build")
    source, dist = root / "src", root / "dist"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    script = "from setuptools import build_meta as b; b.build_wheel({0!r}); b.build_sdist({0!r})".format(
        str(dist)
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=source, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))


def shipped_files() -> list[str]:
    manifest = json.loads((REPO / "weights" / "manifest.json").read_text())
    return ["manifest.json", "ATTRIBUTION.md", *(entry["file"] for entry in manifest["models"])]


def test_the_wheel_carries_the_weights_every_package_and_the_metadata(built):
    wheel, sdist = built
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in shipped_files():
        assert f"classsr_cli/_weights/{name}" in names, name
    assert not any(name.startswith("weights/") for name in names)  # no top-level folder in site-packages
    assert "classsr_cli/samples/picos-de-europa.png" in names
    packages = sorted(
        str(init.parent.relative_to(REPO)) for init in (REPO / "classsr_cli").rglob("__init__.py")
    )
    for package in packages:  # pyproject lists packages by hand: none may be left out
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel (pyproject packages)"
    info = next(name for name in names if name.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "License-Expression: MIT" in metadata and "Requires-Dist: platformdirs" in metadata
    entry_points = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "classsr = classsr_cli.cli:main" in entry_points
    in_sdist = set(tarfile.open(sdist).getnames())
    for name in shipped_files():  # a wheel built from the sdist needs them too
        assert any(entry.endswith(f"/weights/{name}") for entry in in_sdist), name


# Run in a fresh process from another folder, with the unpacked wheel first on the path: where the package
# comes from, which weights folders it uses, an upscale with the shipped weights and a `weights add`.
INSTALLED = r"""
import json, sys
import classsr_cli
from typer.testing import CliRunner
from classsr_cli.cli import app

runner = CliRunner()
listed = runner.invoke(app, ["weights", "list", "--json"])
upscaled = runner.invoke(app, ["upscale", sys.argv[1], "out.png", "--model", "fsrcnn", "--json"])
base = json.loads(listed.stdout)["models"][0]["folder"] + "/fsrcnn-o.safetensors"
added = runner.invoke(app, ["weights", "add", base, "--name", "mine.safetensors", "--json"])
version = runner.invoke(app, ["--version"])
print(json.dumps({
    "package": classsr_cli.__file__,
    "list": json.loads(listed.stdout),
    "upscale": [upscaled.exit_code, upscaled.output[-2000:]],
    "add": [added.exit_code, added.output[-2000:]],
    "version": version.stdout.strip(),
}))
"""


def test_the_unpacked_wheel_runs_from_any_folder_with_its_own_weights(built, tmp_path):
    wheel, _ = built
    site, elsewhere, user = tmp_path / "site", tmp_path / "elsewhere", tmp_path / "user"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    write_image(elsewhere / "in.png", np.full((40, 40, 3), 0.5, np.float32))
    env = {key: value for key, value in os.environ.items() if key not in ("CLASSSR_WEIGHTS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), CLASSSR_USER_WEIGHTS=str(user))
    result = subprocess.run(
        [sys.executable, "-c", INSTALLED, "in.png"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site)
    assert report["list"]["folders"] == {"shipped": str(site / "classsr_cli" / "_weights"), "user": str(user)}
    assert {entry["file"] for entry in report["list"]["models"]} == set(shipped_files()[2:])
    assert report["upscale"][0] == 0, report["upscale"][1]
    assert (elsewhere / "out.png").is_file()
    assert report["add"][0] == 0, report["add"][1]
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json", "mine.safetensors"]
    assert sorted(p.name for p in (site / "classsr_cli" / "_weights").iterdir()) == sorted(shipped_files())
    assert report["version"].startswith("classsr 0.")
