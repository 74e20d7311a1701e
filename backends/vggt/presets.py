"""Named VGGT configurations: the architecture as data, and where its weights come from.

``vggt_1b`` is the official ``facebook/VGGT-1B`` (1.19 billion parameters without the tracking head);
its weights are a file the user downloads (``model.pt`` or ``model.safetensors``). ``tiny`` has the
same structure at toy widths, for tests and demos: it is built from a seed (its ~1.5 M parameters would
be 6 MB on disk, too much to bundle), so its outputs mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VGGTConfig:
    """Every number that decides the key layout or the arithmetic of :class:`~.network.VGGTNetwork`.

    ``dpt_layers`` index the aggregator layers the two DPT heads read; the camera head reads the last.
    """

    img_size: int = 518  # side of the square grid DINOv2's position table was learned on, in pixels
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24  # aggregator: frame-wise + global block pairs
    num_heads: int = 16  # aggregator and DINOv2
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4  # per frame, in DINOv2 and in the aggregator
    dino_depth: int = 24
    dino_init_values: float = 1.0  # LayerScale initial value (random builds only)
    rope_freq: float = 100.0
    qk_norm: bool = True
    init_values: float = 0.01  # aggregator and camera trunk LayerScale initial value (random builds only)
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)

    def __post_init__(self) -> None:
        head_dim, remainder = divmod(self.embed_dim, self.num_heads)
        if remainder or head_dim % 4:
            # the 2D RoPE rotates channel pairs within each half of a head
            raise ValueError(f"embed_dim {self.embed_dim} / {self.num_heads} heads must be a multiple of 4")
        if any(not 0 <= layer < self.depth for layer in self.dpt_layers):
            raise ValueError(f"dpt_layers {self.dpt_layers} must lie in 0..{self.depth - 1}")
        if not self.rope_freq > 0:
            raise ValueError(f"rope_freq must be positive, got {self.rope_freq}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")


@dataclass(frozen=True)
class VGGTPreset:
    config: VGGTConfig
    source: str  # where official weights are published, or how the preset's weights are made


PRESETS: dict[str, VGGTPreset] = {
    "vggt_1b": VGGTPreset(
        VGGTConfig(),
        "facebook/VGGT-1B (model.pt or model.safetensors; the tracking head's weights are not used)",
    ),
    "tiny": VGGTPreset(
        VGGTConfig(
            img_size=224, embed_dim=64, depth=4, num_heads=4, dino_depth=2, camera_trunk_depth=2,
            camera_num_heads=4, dpt_features=32, dpt_out_channels=(16, 32, 64, 64), dpt_layers=(0, 1, 2, 3),
            init_values=0.5,  # random residual branches that matter: a wrong rotation shows in the outputs
        ),
        "seeded random weights (not a trained model)",
    ),
}  # fmt: skip
