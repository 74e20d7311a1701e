"""SEA-RAFT as a :class:`~easi3r.contracts.FlowModel`, and the factory behind the flow model ``sea_raft``.

The Easi3R reference computes its flow prior as ``net(rgb(img1) * 255, rgb(img2) * 255, iters=20)`` with
the ``spring-M`` network: ``rgb`` maps the [-1, 1] frames to [0, 1] and clips, and SEA-RAFT maps its
[0, 255] input back to [-1, 1], so the network sees the frames clipped to [-1, 1]. It pads both images by
replicating their borders, centred, to multiples of 8, and keeps the last iteration's full-resolution
flow. :class:`SeaRaftFlow` does the same, without the round trip through [0, 255].
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from easi3r.backends.plugin import RANDOM
from easi3r.backends.sea_raft.network import STRIDE, SeaRaft
from easi3r.backends.sea_raft.presets import PRESETS
from easi3r.backends.sea_raft.weights import load_sea_raft, random_sea_raft
from easi3r.devices import check_device, resolve_device
from easi3r.errors import CheckpointError, FrameError, RecipeError

logger = logging.getLogger(__name__)

KEY = "align.flow_model"  # the recipe key of the flow model's section, for messages
# Memory of the correlation pyramids computed at once: pairs are run in chunks that stay under it (the
# reference runs 12 pairs at a time). At the pipeline's 512×288 frames a pair's pyramid is 28 MB.
CHUNK_BYTES = 2**30
# One pair's pyramid grows with the fourth power of the side (0.45 GB at 1024×576, 5.6 GB at 1920×1080);
# beyond this the frames are refused before anything is allocated.
MAX_PAIR_BYTES = 8 * 2**30
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class SeaRaftFlow:
    """Optical flow from image 1 to image 2 by SEA-RAFT: :class:`~easi3r.contracts.FlowModel`."""

    def __init__(self, model: SeaRaft, *, iters: int) -> None:
        self.model = model.eval()
        self.iters = iters

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` replicated pixels: up to multiples of 8, and to the network's
        smallest side (upstream SEA-RAFT refuses sides under 128 instead), split as evenly as the
        reference splits them (the odd pixel goes right and bottom)."""

        def split(side: int) -> tuple[int, int]:
            total = max(math.ceil(side / STRIDE) * STRIDE, self.model.min_side) - side
            return total // 2, total - total // 2

        return (*split(width), *split(height))

    def __call__(self, images1: Tensor, images2: Tensor) -> Tensor:
        """``images1, images2 (B, 3, H, W)`` in [-1, 1] → ``(B, 2, H, W)`` float32 flow in pixels, (dx, dy),
        on the images' device."""
        if images1.ndim != 4 or images1.shape[1] != 3 or images1.shape != images2.shape:
            raise ValueError(
                f"flow model: two (B, 3, H, W) batches of one shape expected, got {tuple(images1.shape)} "
                f"and {tuple(images2.shape)}"
            )
        height, width = images1.shape[-2:]
        left, right, top, bottom = self.padding(height, width)
        cells = (height + top + bottom) // STRIDE * ((width + left + right) // STRIDE)
        levels = self.model.config.corr_levels
        pair_bytes = 4 * cells**2 * sum(4.0**-level for level in range(levels))
        if pair_bytes > MAX_PAIR_BYTES:
            raise FrameError(
                f"frames of {width}×{height} need {pair_bytes / 1e9:.1f} GB per pair for SEA-RAFT's "
                f"all-pairs correlation (at most {MAX_PAIR_BYTES / 1e9:.1f}); use smaller frames (frames.size)"
            )
        chunk = max(1, int(CHUNK_BYTES // pair_bytes))
        # no_grad, not inference_mode: the flow is a constant target in the aligner's autograd graph,
        # which inference tensors cannot enter
        with torch.no_grad():
            x1, x2 = (
                F.pad(
                    x.to(self.device, torch.float32).clamp(-1, 1),
                    (left, right, top, bottom),
                    mode="replicate",
                )
                for x in (images1, images2)
            )
            flows = [self.model(a, b, self.iters).flow for a, b in zip(x1.split(chunk), x2.split(chunk))]
        flow = torch.cat(flows)[..., top : top + height, left : left + width]
        return flow.to(images1.device)


def build_flow_model(
    *, checkpoint: str | os.PathLike[str] | None, preset: str, iters: int, device: str, seed: int
) -> SeaRaftFlow:
    """The ``sea_raft`` flow model from its recipe parameters (``align.flow_model.*``), each checked here
    with a one-line :class:`~easi3r.errors.RecipeError` naming its key."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise RecipeError(f"recipe key '{KEY}.preset' must be one of {', '.join(PRESETS)}, got {preset!r}")
    for name, value, minimum in (("iters", iters, 0), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise RecipeError(f"recipe key '{KEY}.{name}' must be an integer >= {minimum}, got {value!r}")
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise RecipeError(f"recipe key '{KEY}.device' must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    check_device(device, key=f"{KEY}.device")
    weights = PRESETS[preset].weights
    if checkpoint is None:
        needs = f"its weights file {weights}" if preset != "tiny" else "'random' (it has no trained weights)"
        raise RecipeError(
            f"recipe key '{KEY}.checkpoint' is missing: SEA-RAFT preset {preset!r} needs {needs}; set "
            f"{KEY}.checkpoint=PATH (the official files: github.com/princeton-vl/SEA-RAFT)"
        )
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise RecipeError(f"recipe key '{KEY}.checkpoint' must be a path or 'random', got {checkpoint!r}")
    device = resolve_device(device)
    if checkpoint == RANDOM:
        # the flow then means nothing, and a flow prior built on it steers the alignment anywhere
        logger.warning("flow model sea_raft %r has seeded random weights: its flow means nothing", preset)
        model = random_sea_raft(preset, seed, device=device)
    else:
        if not Path(checkpoint).is_file():
            raise CheckpointError(
                f"checkpoint {checkpoint} ({KEY}.checkpoint): no such file; SEA-RAFT preset {preset!r} "
                f"needs {weights}"
            )
        model = load_sea_raft(checkpoint, preset, device=device)
    return SeaRaftFlow(model, iters=iters)
