"""Registers the CroCo-family backbones ``dust3r`` and ``monst3r``, and the flow model ``sea_raft``, through
the ``easi3r`` entry points.

Imports nothing heavy at module import: the network is built only when a factory is called.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from easi3r.backends.sea_raft.presets import DEFAULT_PRESET, REFERENCE_ITERS  # plain data, no torch
from easi3r.hookspecs import hookimpl

logger = logging.getLogger(__name__)

RANDOM = "random"  # backbone.checkpoint value that asks for seeded random weights (tests, benchmarks)


def build_backbone(
    *,
    family: str,
    preset: str,
    checkpoint: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 8,
    seed: int = 0,
) -> Any:
    """A :class:`~easi3r.backends.adapter.CroCoBackbone` from a checkpoint, the bundled weights of a
    preset, or (``checkpoint="random"``) seeded random weights of a preset's architecture."""
    import torch

    from easi3r.backends.adapter import CroCoBackbone
    from easi3r.backends.checkpoint import build_model, load_model
    from easi3r.backends.croco import CroCoStereo
    from easi3r.backends.presets import PRESETS
    from easi3r.devices import resolve_device
    from easi3r.errors import CheckpointError

    device = resolve_device(device)
    if checkpoint not in (None, RANDOM):
        model, _ = load_model(checkpoint, device="cpu")
    else:
        if preset not in PRESETS:
            raise CheckpointError(f"unknown backbone preset {preset!r}; known: {', '.join(PRESETS)}")
        spec = PRESETS[preset]
        if checkpoint == RANDOM or spec.bundled is not None:  # every bundled preset's weights are random
            # a run on them looks like any other run, and its masks look plausible: say so on every run
            where = "seeded" if checkpoint == RANDOM else "bundled"
            logger.warning(
                "backbone %r preset %r has random test weights (%s): its masks and geometry mean nothing; "
                "give --checkpoint",
                family,
                preset,
                where,
            )
        if checkpoint == RANDOM:
            torch.manual_seed(seed)
            model = CroCoStereo(**spec.constructor)
        elif spec.bundled is not None:
            from safetensors.torch import load_file

            model = build_model(spec.constructor, load_file(spec.bundled))
        else:
            raise CheckpointError(
                f"backbone preset {preset!r} needs its weights: download {spec.source} and pass "
                "backbone.checkpoint=PATH (a .pth file or a folder with config.json + model.safetensors)"
            )
    return CroCoBackbone(model, name=family, device=device, batch_size=batch_size, precision=precision)


def _dust3r(preset: str = "vitl_512_dpt", **kwargs: Any) -> Any:
    return build_backbone(family="dust3r", preset=preset, **kwargs)


def _monst3r(preset: str = "monst3r_vitl_512_dpt", **kwargs: Any) -> Any:
    return build_backbone(family="monst3r", preset=preset, **kwargs)


def _vggt(
    preset: str = "vggt_1b",
    checkpoint: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 8,
    seed: int = 0,
) -> Any:
    """A :class:`~easi3r.backends.vggt.backbone.VGGTBackbone` from a checkpoint (``model.pt`` or
    ``model.safetensors`` of facebook/VGGT-1B), or seeded random weights of a preset (``checkpoint:
    random``, and the ``tiny`` preset, which has no trained weights)."""
    from easi3r.backends.vggt.backbone import VGGTBackbone
    from easi3r.backends.vggt.checkpoint import load_vggt
    from easi3r.backends.vggt.presets import PRESETS
    from easi3r.errors import CheckpointError

    if checkpoint is None and preset in PRESETS and preset != "tiny":
        raise CheckpointError(
            f"backbone preset {preset!r} needs its weights: download {PRESETS[preset].source.split(' (')[0]} "
            "model.pt or model.safetensors and pass backbone.checkpoint=PATH (--checkpoint PATH)"
        )
    random = checkpoint in (None, RANDOM)
    if random:
        logger.warning(
            "backbone 'vggt' preset %r has seeded random weights: its masks and geometry mean nothing; "
            "give --checkpoint",
            preset,
        )
    network = load_vggt(None if random else checkpoint, preset, seed=seed)
    return VGGTBackbone(network, device=device, batch_size=batch_size, precision=precision)


@hookimpl
def easi3r_backbones() -> dict[str, Any]:
    return {"dust3r": _dust3r, "monst3r": _monst3r, "vggt": _vggt}


def _sea_raft(
    checkpoint: str | None = None,
    preset: str = DEFAULT_PRESET,
    iters: int = REFERENCE_ITERS,
    device: str = "auto",
    seed: int = 0,
) -> Any:
    """SEA-RAFT optical flow (:class:`~easi3r.backends.sea_raft.flow.SeaRaftFlow`). Defaults are the
    reference's: the ``M`` network (``Tartan-C-T-TSKH-spring540x960-M.pth``) run for 20 iterations;
    ``checkpoint="random"`` gives seeded random weights (``seed``)."""
    from easi3r.backends.sea_raft.flow import build_flow_model

    return build_flow_model(checkpoint=checkpoint, preset=preset, iters=iters, device=device, seed=seed)


@hookimpl
def easi3r_flow_models() -> dict[str, Any]:
    return {"sea_raft": _sea_raft}


@hookimpl
def easi3r_convert_checkpoint(src: Path, dst: Path) -> Path:
    """Every checkpoint of the CroCo family (DUSt3R, MonST3R) converts the same way."""
    from easi3r.backends.checkpoint import convert_to_hub_folder

    return convert_to_hub_folder(src, dst)
