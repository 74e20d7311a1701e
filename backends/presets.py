"""Named network configurations (timm-style presets as data): constructor arguments and where the
weights come from.

The official presets need a checkpoint file from the user (no weights are downloaded implicitly);
``tiny`` ships with the package: seeded random weights with the real architecture, for the demo and tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

_VITL = dict(
    pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", output_mode="pts3d",
    depth_mode=("exp", -math.inf, math.inf), conf_mode=("exp", 1, math.inf),
    enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
)  # fmt: skip

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Preset:
    constructor: dict
    source: str  # where official weights are published, or the bundled file
    bundled: Path | None = None


PRESETS: dict[str, Preset] = {
    "vitl_512_dpt": Preset(
        dict(_VITL, img_size=(512, 512), head_type="dpt"),
        "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt (DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth)",
    ),
    "vitl_512_linear": Preset(
        dict(_VITL, img_size=(512, 512), head_type="linear"),
        "naver/DUSt3R_ViTLarge_BaseDecoder_512_linear (DUSt3R_ViTLarge_BaseDecoder_512_linear.pth)",
    ),
    "vitl_224_linear": Preset(
        dict(_VITL, img_size=(224, 224), head_type="linear"),
        "naver/DUSt3R_ViTLarge_BaseDecoder_224_linear (DUSt3R_ViTLarge_BaseDecoder_224_linear.pth)",
    ),
    "monst3r_vitl_512_dpt": Preset(
        dict(_VITL, img_size=(512, 512), head_type="dpt", freeze="encoder"),
        "Junyi42/MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt (MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt.pth)",
    ),
    # the golden test configuration: 9 attention channels, 16-wide token grid, calibrated linear heads
    "tiny": Preset(
        dict(
            pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", img_size=(512, 512), head_type="linear",
            output_mode="pts3d", depth_mode=("exp", -math.inf, math.inf), conf_mode=("exp", 1, math.inf),
            enc_embed_dim=128, enc_depth=3, enc_num_heads=2, dec_embed_dim=96, dec_depth=3, dec_num_heads=3,
        ),
        "bundled with easi3r (random weights, not a trained model)",
        bundled=WEIGHTS_DIR / "tiny_dust3r.safetensors",
    ),
    # a small DPT configuration for tests and benchmarks of the DPT path (random init, no weights)
    "tiny_dpt": Preset(
        dict(
            pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", img_size=(512, 512), head_type="dpt",
            output_mode="pts3d", depth_mode=("exp", -math.inf, math.inf), conf_mode=("exp", 1, math.inf),
            enc_embed_dim=192, enc_depth=4, enc_num_heads=4, dec_embed_dim=192, dec_depth=12, dec_num_heads=12,
        ),
        "random initialisation (for tests and benchmarks)",
    ),
}  # fmt: skip
