"""The third-party plug-in package in ``examples/``: installed for real (into a temporary folder on the
Python path), discovered by entry point, and selected from YAML."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import FRAMES

EXAMPLE = Path(__file__).parents[1] / "examples" / "easi3r-example-plugin"
# a real pip install and real processes: about 6 s in all
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    # pip builds in the source folder (build/, *.egg-info): build a copy, never the checkout
    source = tmp_path_factory.mktemp("src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True,
    )  # fmt: skip
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, EASI3R_NO_PROGRESS="1")


def easi3r(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "easi3r", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_plugin_is_listed(plugin_env):
    proc = easi3r(plugin_env, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert "easi3r-example-plugin" in proc.stdout and "source_contrast" in proc.stdout


def test_run_with_plugin_rule_from_yaml(plugin_env, tmp_path):
    out = tmp_path / "out"
    frames = [str(FRAMES / f"0000{i}.jpg") for i in range(4)]
    proc = easi3r(
        plugin_env, "run", *frames, "--recipe", "source_contrast", "-o", str(out), "align.name=none"
    )
    assert proc.returncode == 0, proc.stderr
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["rule"] == {"name": "source_contrast", "power": 2.0}
    assert run["plugins"]["rule"]["distribution"] == "easi3r-example-plugin"
    assert len(list((out / "masks").glob("dynamic_mask_*.png"))) == 4


def test_plugin_parameters_are_validated(plugin_env):
    proc = easi3r(plugin_env, "validate", "source_contrast", "rule.power=-1")
    assert proc.returncode == 2
    assert "rule.power" in proc.stderr and "Traceback" not in proc.stderr


def test_blocking_the_plugin(plugin_env):
    env = dict(plugin_env, EASI3R_BLOCK_PLUGINS="example")
    proc = easi3r(env, "validate", "tiny", "rule.name=source_contrast")
    assert proc.returncode == 2
    assert "unknown mask rule 'source_contrast'" in proc.stderr


def test_run_the_plugin_frame_set_backbone_from_yaml(plugin_env, tmp_path):
    """A third party's frame-set backbone runs through the CLI from its own recipe, every default export."""
    out = tmp_path / "out"
    frames = [str(FRAMES / f"0000{i}.jpg") for i in range(6)]
    proc = easi3r(plugin_env, "run", *frames, "--recipe", "tiny_frameset", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["plugins"]["backbone"]["distribution"] == "easi3r-example-plugin"
    assert "(6 frames, 1 windows" in proc.stdout
    assert (out / "frame_predictions.safetensors").is_file() and (out / "scene" / "scene.glb").is_file()
    assert len(list((out / "masks").glob("dynamic_mask_*.png"))) == 6
