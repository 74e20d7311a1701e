"""``easi3r synth``: synthetic sequences with exact ground truth written to disk, for evaluation and calibration.

Each sequence is a clip of :func:`easi3r.synthetic.make_scene` (a textured box room with moving spheres and
boxes) in the layout the ``synthetic`` dataset reader reads (:mod:`easi3r.eval.datasets`)::

    OUT/dataset.json               the options and seeds that made the files
    OUT/seq000/rgb/00000.png       8-bit RGB (lossless)
    OUT/seq000/masks/00000.png     0 / 255: 255 where the pixel sees a moving object
    OUT/seq000/depth/00000.npy     float32 z-depth, (H, W)
    OUT/seq000/poses.txt           camera-to-world, TUM lines 't x y z qx qy qz qw' (t = frame index)
    OUT/seq000/intrinsics.txt      one row-major 3×3 matrix (9 numbers) per frame

Sequence ``k`` uses seed ``seed + k``, so sequences differ and the same options give byte-identical files.
The folder appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from easi3r.errors import Easi3RError
from easi3r.outputs import claim_output_dir, staged_output_dir
from easi3r.synthetic import TEXTURES, SyntheticScene, make_scene
from easi3r.trajectory_io import write_tum

__all__ = ["MOTIONS", "TEXTURES", "parse_size", "write_synthetic_dataset"]

logger = logging.getLogger(__name__)

MOTIONS = ("orbit", "forward", "mixed")  # "mixed": orbit for even sequences, forward for odd ones
# Below this the network's patch grid (16 px) has nothing to work with.
_MIN_SIDE = 16


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (e.g. ``144x256``) as ``(H, W)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if match is None:
        raise Easi3RError(f"--size must be HEIGHTxWIDTH in pixels (e.g. 144x256), got {text!r}")
    return int(match[1]), int(match[2])


def write_synthetic_dataset(
    out: str | Path,
    *,
    sequences: int = 8,
    frames: int = 10,
    objects: int = 2,
    motion: str = "orbit",
    texture: str = "pattern",
    size: tuple[int, int] = (144, 256),
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Write ``sequences`` clips of ``frames`` frames of ``size`` = (H, W) to ``out``; returns their names.

    ``motion`` is "orbit", "forward" or "mixed"; ``texture`` one of :data:`TEXTURES`. ``log`` gets one line
    per sequence written (default: this module's logger). Bad options are refused before anything is written.
    """
    _check_options(sequences, frames, objects, motion, texture, size, seed)
    log = log or logger.info
    digits = max(3, len(str(sequences - 1)))  # names sort in sequence order however many there are
    names = [f"seq{k:0{digits}d}" for k in range(sequences)]
    plan = [(name, _motion_of(motion, k), seed + k) for k, name in enumerate(names)]
    manifest = {
        "generator": "easi3r.synthetic.make_scene",
        "options": {
            "sequences": sequences,
            "frames": frames,
            "objects": objects,
            "motion": motion,
            "texture": texture,
            "size": list(size),
            "seed": seed,
        },
        "sequences": [{"name": name, "motion": kind, "seed": s} for name, kind, s in plan],
    }
    with (
        claim_output_dir(out, overwrite=overwrite, log=log),
        staged_output_dir(out, overwrite=overwrite) as tmp,
    ):
        for k, (name, kind, sequence_seed) in enumerate(plan):
            scene = make_scene(
                n_frames=frames,
                size=size,
                n_objects=objects,
                motion=kind,
                seed=sequence_seed,
                texture=texture,
            )
            _write_sequence(tmp / name, scene)
            log(f"{name} ({k + 1}/{sequences}): {kind}, {frames} frames, seed {sequence_seed}")
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return names


def _check_options(
    sequences: int, frames: int, objects: int, motion: str, texture: str, size: tuple[int, int], seed: int
) -> None:
    if sequences < 1:
        raise Easi3RError(f"--sequences must be at least 1, got {sequences}")
    if frames < 2:
        raise Easi3RError(f"--frames must be at least 2 (a pair of views), got {frames}")
    if objects < 0:
        raise Easi3RError(f"--objects must be 0 or more, got {objects}")
    if motion not in MOTIONS:
        raise Easi3RError(f"--motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
    if texture not in TEXTURES:
        raise Easi3RError(f"--texture must be one of {', '.join(TEXTURES)}, got {texture!r}")
    if seed < 0:
        raise Easi3RError(f"--seed must be 0 or more, got {seed}")
    if len(size) != 2 or min(size) < _MIN_SIDE:
        raise Easi3RError(
            f"--size must be at least {_MIN_SIDE}x{_MIN_SIDE} pixels, got {'x'.join(map(str, size))}"
        )


def _motion_of(motion: str, index: int) -> str:
    if motion == "mixed":
        return "orbit" if index % 2 == 0 else "forward"
    return motion


def _write_sequence(folder: Path, scene: SyntheticScene) -> None:
    for sub in ("rgb", "masks", "depth"):
        (folder / sub).mkdir(parents=True)
    rgb = (scene.rgb.numpy() * 255).round().clip(0, 255).astype(np.uint8)
    masks = scene.masks.numpy().astype(np.uint8) * 255
    depth = scene.depth.numpy().astype(np.float32)
    for t in range(len(scene)):
        Image.fromarray(rgb[t]).save(folder / "rgb" / f"{t:05d}.png")
        Image.fromarray(masks[t]).save(folder / "masks" / f"{t:05d}.png")
        np.save(folder / "depth" / f"{t:05d}.npy", depth[t])
    write_tum(folder / "poses.txt", np.arange(len(scene)), scene.cam2world.double().numpy())
    np.savetxt(
        folder / "intrinsics.txt",
        scene.intrinsics.double().numpy().reshape(-1, 9),
        fmt="%.17g",
        header="row-major 3x3 intrinsics per frame: fx 0 cx 0 fy cy 0 0 1",
    )
