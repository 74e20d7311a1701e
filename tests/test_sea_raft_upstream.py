"""SEA-RAFT against the official code (princeton-vl/SEA-RAFT), on seeded random weights loaded into both.

Runs when ``EASI3R_SEA_RAFT_UPSTREAM`` points at a SEA-RAFT checkout; skipped otherwise. The official
encoders fetch ImageNet weights through torchvision when they are built; those are overwritten here, so
a stub stands in for torchvision when it is not installed.

``python -m tests.test_sea_raft_upstream OUT_DIR`` writes, from the checkout, the files that
``tests/test_sea_raft.py`` compares against without it: ``sea-raft-M-keys.json`` (the official key list)
and ``golden-sea-raft/`` (inputs and upstream outputs); copy them to ``tests/data/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from easi3r.backends.sea_raft.presets import PRESETS, SeaRaftConfig
from easi3r.backends.sea_raft.weights import random_sea_raft

from .helpers import relative_error
from .test_sea_raft import GOLDEN, ITERS, KEYS, PARITY_TOL, SEED, load_golden, our_outputs, to_unit

UPSTREAM = os.environ.get("EASI3R_SEA_RAFT_UPSTREAM")
pytestmark = [
    pytest.mark.upstream,
    pytest.mark.skipif(not UPSTREAM, reason="set EASI3R_SEA_RAFT_UPSTREAM to a SEA-RAFT checkout to run"),
]

# our presets → the official config file of the same architecture
OFFICIAL_CONFIGS = {"M": "config/eval/spring-M.json", "S": "config/eval/spring-S.json"}
_PRETRAIN = {(2, 2, 2): "resnet18", (3, 4, 6): "resnet34"}


def _upstream_args(root: Path, preset: str) -> argparse.Namespace:
    """The official code's configuration namespace for ``preset`` (its own file where it has one)."""
    if preset in OFFICIAL_CONFIGS:
        return argparse.Namespace(**json.loads((root / OFFICIAL_CONFIGS[preset]).read_text()))
    return argparse.Namespace(
        **_architecture(PRESETS[preset].config), iters=4, use_var=True, var_min=0, var_max=10
    )


def _architecture(config: SeaRaftConfig) -> dict:
    """The official config fields that shape the network, from ours."""
    return dict(
        pretrain=_PRETRAIN[config.stage_depths], initial_dim=config.initial_dim,
        block_dims=list(config.block_dims), radius=config.radius, dim=config.dim, num_blocks=config.num_blocks,
    )  # fmt: skip


@contextlib.contextmanager
def upstream_raft(root: Path) -> Iterator[type]:
    """The official ``RAFT`` class, importable only inside the block: its modules (``raft``, ``utils``, …)
    have generic names, so they leave ``sys.modules`` again afterwards."""
    before = set(sys.modules)
    stub = {}
    try:
        import torchvision  # noqa: F401
    except ImportError:
        models = types.ModuleType("torchvision.models")
        models.resnet18 = models.resnet34 = lambda weights=None: torch.nn.Module()  # empty state dict
        models.ResNet18_Weights = models.ResNet34_Weights = types.SimpleNamespace(IMAGENET1K_V1=None)
        stub = {"torchvision": types.ModuleType("torchvision"), "torchvision.models": models}
        stub["torchvision"].models = models
    sys.modules.update(stub)
    sys.path.insert(0, str(root / "core"))
    try:
        from raft import RAFT  # the official module, on the path just added

        yield RAFT
    finally:
        sys.path.remove(str(root / "core"))
        for name in set(sys.modules) - before:
            del sys.modules[name]


def upstream_model(root: Path, preset: str, seed: int = SEED) -> torch.nn.Module:
    """The official network of ``preset`` with our seeded random weights, in eval mode."""
    with upstream_raft(root) as raft:
        model = raft(_upstream_args(root, preset))
    model.load_state_dict(random_sea_raft(preset, seed).state_dict(), strict=True)
    return model.eval()


def upstream_outputs(model: torch.nn.Module, image1: torch.Tensor, image2: torch.Tensor) -> tuple:
    """(flow, info) of the official forward on uint8-valued images, as the Easi3R reference calls it."""
    with torch.no_grad():
        out = model(image1.float(), image2.float(), iters=ITERS, test_mode=True)
    return out["flow"][-1], out["info"][-1]


def _pair(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uint8 images: smooth colour noise, and the same moved by (3, -2) pixels (a flow to find)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (batch, 3, height // 8 + 2, width // 8 + 2)))
    texture = F.interpolate(coarse, size=(height + 8, width + 8), mode="bicubic", align_corners=False)
    texture = texture.clamp(0, 255).round().to(torch.uint8)
    return texture[..., 4 : 4 + height, 4 : 4 + width], texture[..., 6 : 6 + height, 1 : 1 + width]


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(UPSTREAM or "")


@pytest.mark.parametrize("preset", sorted(OFFICIAL_CONFIGS))
def test_presets_are_the_official_configs(root: Path, preset: str) -> None:
    ours = _architecture(PRESETS[preset].config)
    official = vars(_upstream_args(root, preset))
    assert {key: official[key] for key in ours} == ours


def test_official_keys_are_recorded(root: Path) -> None:
    """tests/data/sea-raft-M-keys.json is the official M network's state dict (names, shapes, order)."""
    with upstream_raft(root) as raft, torch.device("meta"):
        official = raft(_upstream_args(root, "M")).state_dict()
    recorded = json.loads(KEYS.read_text())["keys"]
    assert list(recorded.items()) == [(key, list(value.shape)) for key, value in official.items()]


@pytest.mark.parametrize(
    ("preset", "batch", "size"),
    [("tiny", 2, (132, 196)), pytest.param("M", 1, (132, 196), marks=pytest.mark.slow)],
)
def test_flow_matches_upstream(root: Path, preset: str, batch: int, size: tuple[int, int]) -> None:
    """Same weights, same images (sides not multiples of 8: the padding is compared too), 20 iterations."""
    image1, image2 = _pair(batch, *size, seed=1)
    theirs = upstream_outputs(upstream_model(root, preset), image1, image2)
    ours = our_outputs(random_sea_raft(preset, SEED), to_unit(image1), to_unit(image2), ITERS)
    assert relative_error(ours.flow, theirs[0]) < PARITY_TOL
    assert relative_error(ours.info, theirs[1]) < PARITY_TOL


@pytest.mark.slow
def test_golden_files_are_upstream_outputs(root: Path) -> None:
    """The committed golden outputs are what the official code gives today (regenerate them if not)."""
    golden = load_golden()
    for preset in ("tiny", "M"):
        flow, info = upstream_outputs(upstream_model(root, preset), golden["image1"], golden["image2"])
        assert relative_error(flow, golden[f"{preset}/flow"]) < PARITY_TOL
        if f"{preset}/info" in golden:
            assert relative_error(info, golden[f"{preset}/info"]) < PARITY_TOL


def write_reference_files(root: Path, out: Path) -> None:
    """Write ``sea-raft-M-keys.json`` and ``golden-sea-raft/`` under ``out`` from the checkout at ``root``."""
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with upstream_raft(root) as raft, torch.device("meta"):
        official = raft(_upstream_args(root, "M"))
    keys = {
        "source": "state_dict() of princeton-vl/SEA-RAFT core/raft.py RAFT(config/eval/spring-M.json), built "
        f"on the meta device; batch norms' num_batches_tracked are int64, the rest float32; upstream commit "
        f"{commit or 'unknown'}",
        "parameters": sum(p.numel() for p in official.parameters()),
        "keys": {key: list(value.shape) for key, value in official.state_dict().items()},
    }
    lines = [f"  {json.dumps(key)}: {json.dumps(shape)}" for key, shape in keys["keys"].items()]
    header = f'{{\n"source": {json.dumps(keys["source"])},\n"parameters": {keys["parameters"]},\n"keys": {{\n'
    (out / KEYS.name).write_text(header + ",\n".join(lines) + "\n}\n}\n")

    image1, image2 = _pair(1, 122, 140, seed=0)
    tensors = {"image1": image1.contiguous(), "image2": image2.contiguous()}
    for preset in ("tiny", "M"):
        flow, info = upstream_outputs(upstream_model(root, preset), image1, image2)
        tensors[f"{preset}/flow"] = flow.contiguous()
        if preset == "tiny":  # the M uncertainty would double the files' size; tiny's covers the code path
            tensors[f"{preset}/info"] = info.contiguous()
    folder = out / GOLDEN.name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "reference.safetensors"))
    info_json = {
        "generator": "python -m tests.test_sea_raft_upstream OUT_DIR",
        "upstream": f"princeton-vl/SEA-RAFT {commit or 'unknown'}",
        "call": f"RAFT(args)(image1, image2, iters={ITERS}, test_mode=True): flow[-1], info[-1] on uint8-valued "
        "float images, as the Easi3R reference calls it (ours gets image / 127.5 - 1)",
        "weights": f"easi3r.backends.sea_raft.weights.random_state_dict(preset config, seed={SEED})",
        "presets": {"tiny": _architecture(PRESETS["tiny"].config), "M": OFFICIAL_CONFIGS["M"]},
        "images": "smooth colour noise (seed 0) and the same moved by (3, -2) pixels, 122x140",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }
    (folder / "info.json").write_text(json.dumps(info_json, indent=1) + "\n")


if __name__ == "__main__":
    if not UPSTREAM or len(sys.argv) != 2:
        sys.exit("usage: EASI3R_SEA_RAFT_UPSTREAM=CHECKOUT python -m tests.test_sea_raft_upstream OUT_DIR")
    write_reference_files(Path(UPSTREAM), Path(sys.argv[1]))
