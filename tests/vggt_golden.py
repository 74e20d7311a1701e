"""What the VGGT golden files hold and how both sides compute it (shared by test_vggt_network.py, which
checks the network against the committed files, and test_vggt_upstream.py, which checks the files against
the official code and rewrites them: ``EASI3R_VGGT_UPSTREAM=... python tests/test_vggt_upstream.py``).

The network case: the ``tiny`` preset's seeded random weights and seeded random images of a size that
needs DINOv2's position table resampled; a few aggregator layers and every head output are stored
(about 0.3 MB). Random weights come from torch's generator: a torch release that changes its random
streams or default initialisations needs the files regenerated. The preprocessing cases: a landscape
and a portrait video frame and a transparent image, through VGGT's "crop" and "pad" modes; stored as the
SHA-256 of the 8-bit pixels and a thumbnail (every 7th pixel) to show where they differ.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from easi3r.backends.vggt.checkpoint import load_vggt
from easi3r.backends.vggt.network import VGGTNetwork

try:
    from .helpers import DATA
except ImportError:  # imported by test_vggt_upstream.py run as a script
    from helpers import DATA  # type: ignore[no-redef]

GOLDEN = DATA / "golden-vggt"
NETWORK_FILE = GOLDEN / "tiny-network.safetensors"
PREPROCESS_FILE = GOLDEN / "preprocess.safetensors"

WEIGHT_SEED, INPUT_SEED = 0, 1
FRAMES, HEIGHT, WIDTH = 3, 42, 70  # a 3 x 5 patch grid: not the 16 x 16 the tiny position table has
LAYERS = (0, 2, 3)  # aggregator layers stored (the tiny preset has 4)
TOLERANCE = 1e-4  # helpers.relative_error allowed for every output

PREPROCESS_CASES = ("landscape", "portrait", "rgba")
PREPROCESS_MODES = ("crop", "pad")  # VGGT's names; easi3r's frames.mode is vggt_<name>
THUMBNAIL_STEP = 7


def golden_images() -> Tensor:
    """``(FRAMES, 3, HEIGHT, WIDTH)`` in [0, 1]."""
    return torch.rand(FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(INPUT_SEED))


def tiny_network() -> VGGTNetwork:
    return load_vggt(None, "tiny", seed=WEIGHT_SEED)


def network_outputs(model: VGGTNetwork, images: Tensor) -> dict[str, Tensor]:
    """The stored layers and the heads' outputs of ``model`` on one window of ``images``."""
    with torch.no_grad():
        keep = {*LAYERS, *model.head_layers}
        tokens, start = model.aggregate(model.embed(images), tuple(images.shape[-2:]), keep=keep)
        out = {f"aggregator.{i}": tokens[i] for i in LAYERS}
        out.update(model.predict(tokens, start, tuple(images.shape[-2:])))
    return out


def preprocess_image_file(case: str, folder: Path) -> Path:
    """The image file of a preprocessing case: a test frame as it is, turned to portrait, or a seeded
    RGBA image with transparent parts (written into ``folder``)."""
    frame = DATA / "frames" / "00000.jpg"
    if case == "landscape":
        return frame
    path = folder / f"{case}.png"
    if case == "portrait":
        with Image.open(frame) as img:
            img.transpose(Image.Transpose.ROTATE_90).save(path)
    else:
        values = np.random.default_rng(INPUT_SEED).integers(0, 256, size=(61, 47, 4), dtype=np.uint8)
        values[::3, :, 3] = 0  # fully transparent rows: white after compositing
        Image.fromarray(values, "RGBA").save(path)
    return path


def pixel_digest(pixels: Tensor) -> tuple[str, Tensor]:
    """(SHA-256 of the 8-bit values, thumbnail) of ``pixels (3, H, W)`` in [0, 1], 8-bit exactly."""
    values = (pixels * 255).round().to(torch.uint8).contiguous()
    return hashlib.sha256(values.numpy().tobytes()).hexdigest(), values[
        :, ::THUMBNAIL_STEP, ::THUMBNAIL_STEP
    ].contiguous()
