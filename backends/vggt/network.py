""":class:`VGGTNetwork`: VGGT without its tracking head, split into the steps a frame-set backbone needs.

``embed`` (DINOv2, frame by frame) → ``aggregate`` (one window of frames, alternating attention, with a
hook into every global attention) → ``predict`` (camera, depth and point heads). ``forward`` chains the
three like the official ``VGGT.forward`` and returns the same dictionary, minus the tracks and the
input images.

Differences from the official implementation, none of which changes a number beyond float rounding:
the aggregator keeps only the layers the heads read (unless asked for more), and the 2D RoPE angles are
computed in float64 before rounding to the tokens' dtype.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor, nn

from easi3r.backends.vggt.aggregator import Aggregator, GlobalAttentionHook
from easi3r.backends.vggt.camera_head import CameraHead
from easi3r.backends.vggt.dpt import DPTHead
from easi3r.backends.vggt.presets import VGGTConfig

# what random weights draw for the learned tokens and position table (layers keep torch's own init)
_TOKEN_STD = 0.02


class VGGTNetwork(nn.Module):
    """VGGT (camera, depth and point heads); ``state_dict()`` keys equal the official ``VGGT``'s minus
    ``track_head.*``. Built from a :class:`~.presets.VGGTConfig`; random weights come from the global
    torch generator (seed it first), official ones from :func:`~.checkpoint.load_vggt`."""

    def __init__(self, config: VGGTConfig | None = None) -> None:
        super().__init__()
        c = config if config is not None else VGGTConfig()
        self.config = c
        self.aggregator = Aggregator(
            img_size=c.img_size, patch_size=c.patch_size, dim=c.embed_dim, depth=c.depth,
            num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, num_register_tokens=c.num_register_tokens,
            dino_depth=c.dino_depth, dino_init_values=c.dino_init_values, rope_freq=c.rope_freq,
            qk_norm=c.qk_norm, init_values=c.init_values,
        )  # fmt: skip
        width = 2 * c.embed_dim  # the heads read frame and global tokens side by side
        self.camera_head = CameraHead(
            width,
            trunk_depth=c.camera_trunk_depth,
            num_heads=c.camera_num_heads,
            mlp_ratio=c.mlp_ratio,
            init_values=c.init_values,
        )
        dense = dict(
            patch_size=c.patch_size,
            features=c.dpt_features,
            out_channels=c.dpt_out_channels,
            layers=c.dpt_layers,
        )
        self.point_head = DPTHead(width, output_dim=4, activation="inv_log", **dense)
        self.depth_head = DPTHead(width, output_dim=2, activation="exp", **dense)
        self._init_tokens()

    def _init_tokens(self) -> None:
        """Random values for the parameters that are not a layer's (zeros at construction): the learned
        tokens and DINOv2's position table, so that a random network tells frames and positions apart."""
        dino = self.aggregator.patch_embed
        for parameter in (
            self.aggregator.camera_token,
            self.aggregator.register_token,
            dino.cls_token,
            dino.register_tokens,
            dino.mask_token,
            dino.pos_embed,
            self.camera_head.empty_pose_tokens,
        ):
            nn.init.normal_(parameter, std=_TOKEN_STD)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token in each frame's tokens (after the camera and register tokens)."""
        return self.aggregator.patch_start_idx

    @property
    def head_layers(self) -> tuple[int, ...]:
        """The aggregator layers the heads read: the DPT layers and the last one (camera head)."""
        return tuple(sorted({*self.config.dpt_layers, self.config.depth - 1}))

    def embed(self, images: Tensor) -> Tensor:
        """``images (T, 3, H, W)`` in [0, 1], ``H`` and ``W`` multiples of the patch size → DINOv2's
        normalised patch tokens ``(T, N, C)``, ``N = H/p · W/p``; each frame independently."""
        return self.aggregator.embed(images)

    def aggregate(
        self,
        patch_tokens: Tensor,
        image_size: tuple[int, int],
        attention_hook: GlobalAttentionHook | None = None,
        keep: Collection[int] | None = None,
    ) -> tuple[list[Tensor | None], int]:
        """One window: ``patch_tokens (S, N, C)`` of its ``S`` frames (the first is the reference frame)
        and the images' ``(H, W)`` → (one entry per aggregator layer, ``patch_start_idx``).

        Entry ``i`` is ``(1, S, P, 2C)``, ``P = patch_start_idx + N``, for the layers in ``keep``
        (default: :attr:`head_layers`) and None for the others, so the list indexes like the official
        one. ``attention_hook(layer, q, k, v, scale)`` replaces the softmax attention of every global
        block (q, k after QK-norm and RoPE; all ``(1, heads, S·P, head_dim)``; returns that shape too).
        """
        height, width = image_size
        grid = (height // self.patch_size, width // self.patch_size)
        keep = self.head_layers if keep is None else keep
        return self.aggregator(patch_tokens, grid, attention_hook, keep), self.patch_start_idx

    def predict(
        self,
        aggregated: Sequence[Tensor | None],
        patch_start_idx: int,
        image_size: tuple[int, int],
        *,
        depth: bool = True,
        points: bool = True,
        camera: bool = True,
    ) -> dict[str, Tensor]:
        """The heads on one window's aggregated tokens, for images of ``image_size`` (H, W): the heads
        need only the size, not the pixels.

        Returns the official keys of the heads asked for: ``pose_enc (1, S, 9)`` (last iteration),
        ``depth (1, S, H, W, 1)``, ``depth_conf (1, S, H, W)``, ``world_points (1, S, H, W, 3)``,
        ``world_points_conf (1, S, H, W)``.
        """
        out, _ = self._heads(aggregated, patch_start_idx, image_size, depth, points, camera)
        return out

    def _heads(
        self,
        aggregated: Sequence[Tensor | None],
        patch_start_idx: int,
        image_size: tuple[int, int],
        depth: bool,
        points: bool,
        camera: bool,
    ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """(the predictions, the pose encoding of every camera iteration)."""
        needed = ([-1] if camera else []) + (list(self.config.dpt_layers) if depth or points else [])
        missing = [i % len(aggregated) for i in needed if aggregated[i] is None]
        if missing:
            raise ValueError(
                f"aggregator layer {missing[0]} was not kept; the heads read layers {self.head_layers}"
            )
        out: dict[str, Tensor] = {}
        iterations: list[Tensor] = []
        if camera:
            iterations = self.camera_head(aggregated[-1], self.config.camera_iterations)
            out["pose_enc"] = iterations[-1]
        if depth:
            out["depth"], out["depth_conf"] = self.depth_head(aggregated, patch_start_idx, image_size)
        if points:
            out["world_points"], out["world_points_conf"] = self.point_head(
                aggregated, patch_start_idx, image_size
            )
        return out, iterations

    def forward(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """``images (S, 3, H, W)`` or ``(B, S, 3, H, W)`` in [0, 1] → the official ``VGGT.forward``
        dictionary (batch dimension always present) without ``track``, ``vis``, ``conf`` and ``images``:
        ``pose_enc``, ``pose_enc_list``, ``depth``, ``depth_conf``, ``world_points``,
        ``world_points_conf``. Each sequence of the batch is one window."""
        if images.ndim == 4:
            images = images[None]
        if images.ndim != 5:
            raise ValueError(f"images must be (S, 3, H, W) or (B, S, 3, H, W), got {tuple(images.shape)}")
        size = tuple(images.shape[-2:])
        results = []
        for window in images:
            aggregated, start = self.aggregate(self.embed(window), size)
            results.append(self._heads(aggregated, start, size, depth=True, points=True, camera=True))
        merged: dict[str, Tensor | list[Tensor]] = {
            key: torch.cat([r[key] for r, _ in results]) for key in results[0][0]
        }
        merged["pose_enc_list"] = [torch.cat(step) for step in zip(*(its for _, its in results))]
        return merged
