"""The frame-set backbone ``vggt``: :class:`~.network.VGGTNetwork` under the framework's contract.

:meth:`VGGTBackbone.encode` runs DINOv2 once per frame; :meth:`decode` runs the aggregator and the heads
window by window through :func:`easi3r.frameset.decode_windows`, whose hook computes every global
attention (capture, re-weighting). The heads are skipped, and the aggregator keeps no layer outputs,
when a pass needs no predictions (pass 1 of VGGT4D).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import Tensor

from easi3r.attention import GlobalAttentionHook, Reweight
from easi3r.backends.croco import grid_positions
from easi3r.backends.vggt.network import VGGTNetwork
from easi3r.backends.vggt.pose import pose_encoding_to_extrinsics_intrinsics
from easi3r.contracts import FrameSetCapture, Progress
from easi3r.devices import resolve_device
from easi3r.errors import RecipeError
from easi3r.frameset import decode_windows
from easi3r.types import Encoded, FrameSetOutputs, FrameSetPredictions

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# floats per token of one window held during a forward beyond the kept layers: the block's input and
# output, q, k, v and the attention output (6C) and the MLP's hidden layer (4C); measured in
# benchmarks/bench_vggt.py
_WORKING_FLOATS_PER_CHANNEL = 12


class VGGTBackbone:
    """:class:`easi3r.contracts.FrameSetBackbone` over a VGGT network."""

    kind = "frame_set"

    def __init__(
        self,
        network: VGGTNetwork,
        *,
        name: str = "vggt",
        device: str = "cpu",
        batch_size: int = 8,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise RecipeError(f"recipe key 'backbone.precision' must be one of {', '.join(PRECISIONS)}")
        self.name = name
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.model = self.network  # the memory estimate counts its parameters
        self.batch_size = batch_size
        self.precision = precision
        self.patch_size = network.patch_size
        self.global_layers = network.config.depth
        self.global_heads = network.config.num_heads

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=torch.device(self.device).type, dtype=dtype):
            yield

    @torch.no_grad()
    def encode(self, images: Tensor) -> Encoded:
        """DINOv2 patch tokens of every frame, ``batch_size`` frames per call (frames in [-1, 1])."""
        height, width = images.shape[-2:]
        patch = self.patch_size
        if height % patch or width % patch:
            raise RecipeError(
                f"VGGT needs frames whose sides are multiples of {patch}, got {width}×{height}: use "
                "frames.mode=vggt_crop or vggt_pad"
            )
        with self._autocast():
            tokens = torch.cat(
                [
                    self.network.embed(((chunk + 1) / 2).to(self.device)).float()
                    for chunk in images.split(self.batch_size)
                ]
            )
        grid = (height // patch, width // patch)
        return Encoded(
            tokens=tokens,
            positions=grid_positions(*grid)[0],
            grid=grid,
            image_size=(int(height), int(width)),
        )

    @torch.no_grad()
    def decode(
        self,
        encoded: Encoded,
        windows: Tensor,
        *,
        capture: FrameSetCapture | None = None,
        reweight: Reweight | None = None,
        heads: bool = True,
        progress: Progress | None = None,
    ) -> FrameSetOutputs:
        def forward(
            start: int, end: int, hook: GlobalAttentionHook, with_heads: bool
        ) -> FrameSetPredictions | None:
            return self._window(encoded, start, end, hook, with_heads)

        return decode_windows(
            encoded,
            windows,
            forward,
            special_tokens=self.network.patch_start_idx,
            device=self.device,
            capture=capture,
            reweight=reweight,
            heads=heads,
            progress=progress,
        )

    def _window(
        self, encoded: Encoded, start: int, end: int, hook: GlobalAttentionHook, heads: bool
    ) -> FrameSetPredictions | None:
        size = encoded.image_size
        tokens = encoded.tokens[start:end].to(self.device)
        with self._autocast():
            # without heads no layer output is kept: pass 1 of VGGT4D only reads the attention
            aggregated, patch_start = self.network.aggregate(tokens, size, hook, keep=None if heads else ())
            if not heads:
                return None
            out = self.network.predict(aggregated, patch_start, size)
        extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(out["pose_enc"][0].float(), size)
        return FrameSetPredictions(
            cam2world=_camera_to_world(extrinsics).cpu(),
            intrinsics=intrinsics.cpu(),
            depth=out["depth"][0, ..., 0].float().cpu(),
            depth_conf=out["depth_conf"][0].float().cpu(),
            pts3d=out["world_points"][0].float().cpu(),
            pts3d_conf=out["world_points_conf"][0].float().cpu(),
        )

    def embedding_bytes(self, height: int, width: int) -> int:
        """One frame's DINOv2 tokens, kept for the whole run."""
        return (height // self.patch_size) * (width // self.patch_size) * self.network.config.embed_dim * 4

    def window_bytes(self, frames: int, height: int, width: int) -> int:
        """Working memory of one window's forward with heads: the kept layer outputs (``2C`` each), one
        block's temporaries, and the heads' full-resolution features."""
        config = self.network.config
        tokens = frames * (
            self.network.patch_start_idx + (height // self.patch_size) * (width // self.patch_size)
        )
        kept = len(self.network.head_layers) * 2 * config.embed_dim
        aggregator = tokens * (kept + _WORKING_FLOATS_PER_CHANNEL * config.embed_dim) * 4
        dense = frames * height * width * config.dpt_features * 4 // 2  # DPT features at half resolution
        return aggregator + dense


def _camera_to_world(extrinsics: Tensor) -> Tensor:
    """``(S, 3, 4)`` world-to-camera ``[R | t]`` → ``(S, 4, 4)`` camera-to-world."""
    rotation, translation = extrinsics[:, :, :3], extrinsics[:, :, 3:]
    pose = torch.zeros(len(extrinsics), 4, 4, dtype=extrinsics.dtype, device=extrinsics.device)
    pose[:, :3, :3] = rotation.transpose(1, 2)
    pose[:, :3, 3:] = -rotation.transpose(1, 2) @ translation
    pose[:, 3, 3] = 1.0
    return pose
