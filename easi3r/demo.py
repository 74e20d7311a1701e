"""``easi3r demo``: the whole pipeline on a generated clip with the bundled tiny model, no download.

The clip is a procedurally rendered room with moving objects (:mod:`easi3r.synthetic`), written as an MP4
and read back through the normal video path. The bundled model has random weights: the run exercises
every stage and writes every file, but its masks mean nothing. Real results need an official checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from easi3r.api import run
from easi3r.outputs import check_output_dir

logger = logging.getLogger(__name__)

DEMO_FRAMES = 8
DEMO_SIZE = (144, 256)  # (H, W): the tiny model's golden configuration


def write_demo_video(path: Path, n_frames: int = DEMO_FRAMES, size: tuple[int, int] = DEMO_SIZE) -> Path:
    """Render the synthetic clip and write it as an MP4."""
    from easi3r.synthetic import make_scene

    scene = make_scene(n_frames=n_frames, size=size, n_objects=2, motion="orbit", seed=0)
    frames = (scene.rgb.numpy() * 255).round().clip(0, 255).astype(np.uint8)
    iio.imwrite(path, frames, fps=5, codec="libx264", macro_block_size=16)
    return path


def run_demo(out_dir: Path, *, overwrite: bool = False) -> None:
    check_output_dir(out_dir, overwrite=overwrite)  # before rendering anything
    with tempfile.TemporaryDirectory(prefix="easi3r-demo-") as tmp:
        video = write_demo_video(Path(tmp) / "demo.mp4")
        logger.info("rendered a %d-frame clip, running recipe 'tiny' on the bundled model", DEMO_FRAMES)
        result = run(video, "tiny", out_dir, overwrite=overwrite)
    masks = result.masks
    share = 100 * float(masks.masks.float().mean()) if masks is not None else 0.0
    print(
        f"easi3r demo: wrote {out_dir} ({len(result.frames)} frames, {len(result.pairs)} {result.unit_name}, "
        f"dynamic pixels {share:.1f}%; see {out_dir}/overview.png)\n"
        "easi3r demo: the bundled model has RANDOM weights, so these masks are not meaningful. For real "
        "results download an official checkpoint (e.g. DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth) and run\n"
        "    easi3r run VIDEO_OR_FRAMES -o OUT --checkpoint DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth"
    )
