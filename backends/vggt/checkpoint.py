"""Loading VGGT weights safely: the official ``facebook/VGGT-1B`` files and seeded random weights.

The official ``model.pt`` is a bare state dict saved by ``torch.save``; ``model.safetensors`` holds the
same tensors. Both are read by the project's safe readers (:mod:`easi3r.backends.checkpoint`:
``torch.load(weights_only=True)``, truncation and format checks, float tensors only), nothing in them is
executed. The files store no configuration: the architecture is the preset of :mod:`.presets` whose key
names and shapes all match. Before any memory is allocated, the tensor count is checked against
:data:`~easi3r.backends.checkpoint.MAX_PARAMETERS` (from the safetensors header, or from the
memory-mapped ``.pt``) and the keys and shapes against the network built on the meta device. The
tracking head (``track_head.*``) is not part of :class:`~.network.VGGTNetwork`: its keys are skipped.
Every problem is a one-line :class:`~easi3r.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from easi3r.backends.checkpoint import (
    MAX_PARAMETERS,
    architecture_of,
    read_state_dict,
    read_torch_file,
    safetensors_shapes,
)
from easi3r.backends.vggt.network import VGGTNetwork
from easi3r.backends.vggt.presets import PRESETS
from easi3r.errors import ArchitectureError, CheckpointError

logger = logging.getLogger(__name__)

SKIPPED_PREFIX = "track_head."  # the official tracking head, which this network leaves out
# what a checkpoint folder (a hub snapshot) may hold, in the order they are looked for
FOLDER_FILES = ("model.safetensors", "model.pt")


def identify_architecture(path: str | os.PathLike[str]) -> str:
    """``"vggt"``, ``"croco"`` (DUSt3R, MonST3R) or ``"unknown"``: which network family a checkpoint file
    (or checkpoint folder) belongs to, from its key names alone. A safetensors file's header is read, a
    ``.pt``/``.pth`` is loaded memory-mapped (nothing is executed; the weights stay on disk where the
    format allows)."""
    file = _weights_file(Path(path))
    if file.suffix == ".safetensors":
        keys = safetensors_shapes(file).keys()
    else:
        stored = read_torch_file(file)
        if not isinstance(stored, Mapping):
            return "unknown"
        model = stored.get("model")
        keys = (model if isinstance(model, Mapping) else stored).keys()
    return architecture_of(key for key in keys if isinstance(key, str))


def load_vggt(
    path: str | os.PathLike[str] | None,
    preset: str = "vggt_1b",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> VGGTNetwork:
    """A :class:`VGGTNetwork` in eval mode on ``device``.

    With ``path`` (a ``.pt``/``.pth``/``.safetensors`` file, or a folder holding ``model.safetensors``
    or ``model.pt``), its weights, cast to float32; the checkpoint decides the architecture and
    ``preset`` is not used. Without, ``preset``'s architecture with random weights drawn after
    ``torch.manual_seed(seed)``.
    """
    if path is None:
        if preset not in PRESETS:
            raise CheckpointError(f"unknown VGGT preset {preset!r}; known: {', '.join(PRESETS)}")
        torch.manual_seed(seed)
        with torch.device(device):
            return VGGTNetwork(PRESETS[preset].config).eval()
    file = _weights_file(Path(path))
    # a .pt is memory-mapped (the weights stay on disk until used); a .safetensors is read after its header
    state_dict = None if file.suffix == ".safetensors" else read_state_dict(file)
    if state_dict is None:
        shapes = safetensors_shapes(file)
    else:
        shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    _check_contents(shapes, file)
    kept = {key: shape for key, shape in shapes.items() if not key.startswith(SKIPPED_PREFIX)}
    if len(kept) < len(shapes):
        logger.debug(
            "checkpoint %s: %d %s* tensors skipped (no tracking head)",
            file,
            len(shapes) - len(kept),
            SKIPPED_PREFIX,
        )
    name, model = _matching_network(kept, file)
    logger.debug("checkpoint %s: VGGT preset %s", file, name)
    if state_dict is None:
        state_dict = read_state_dict(file)
    # assign: the network takes the checkpoint's tensors (cast to float32 where they are not) instead of
    # allocating its own and copying them in
    weights = {key: state_dict[key].to(torch.float32) for key in kept}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.to(device).eval()


def _weights_file(path: Path) -> Path:
    """The checkpoint file itself, or the weights file inside a checkpoint folder."""
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"checkpoint folder {path} holds neither {' nor '.join(FOLDER_FILES)}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file or folder")
    return path


def _check_contents(shapes: Mapping[str, tuple[int, ...]], file: Path) -> None:
    """Refuse a checkpoint too large to allocate or of another network family, from its shapes alone."""
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"checkpoint {file} holds {count:.3g} parameters; at most {MAX_PARAMETERS:.0e} are allowed"
        )
    found = architecture_of(shapes)
    if found == "croco":
        raise ArchitectureError(
            f"checkpoint {file} is a CroCo-family (DUSt3R/MonST3R) checkpoint (keys enc_blocks.*, "
            "dec_blocks.*), not a VGGT one; use a DUSt3R or MonST3R recipe"
        )
    if found != "vggt":
        raise CheckpointError(
            f"checkpoint {file} is not a VGGT checkpoint (no aggregator.* and camera_head.* keys)"
        )


def _matching_network(shapes: Mapping[str, tuple[int, ...]], file: Path) -> tuple[str, VGGTNetwork]:
    """(preset name, network on the meta device) of the preset whose keys and shapes equal ``shapes``;
    otherwise the differences from the closest preset, as one line."""
    problems: list[tuple[int, str]] = []
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            model = VGGTNetwork(preset.config)
        expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        missing = [key for key in expected if key not in shapes]
        unexpected = [key for key in shapes if key not in expected]
        wrong = [key for key in expected if key in shapes and shapes[key] != expected[key]]
        if not (missing or unexpected or wrong):
            return name, model
        problems.append(
            (
                len(missing) + len(unexpected) + len(wrong),
                _differences(name, missing, unexpected, wrong, shapes, expected),
            )
        )
    raise CheckpointError(f"checkpoint {file} fits no VGGT preset: {min(problems)[1]}")


def _differences(
    name: str,
    missing: list[str],
    unexpected: list[str],
    wrong: list[str],
    shapes: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if wrong:
        key = wrong[0]
        parts.append(
            f"{len(wrong)} of another shape (first: {key} is {_shape(shapes[key])}, not {_shape(expected[key])})"
        )
    return f"closest is {name}: " + ", ".join(parts)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"
