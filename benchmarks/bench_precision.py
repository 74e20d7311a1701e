"""How far bf16/fp16 autocast moves the captured maps, the pair predictions and the masks from float32.

    python benchmarks/bench_precision.py [--preset tiny_dpt] [--frames 6] [--device cpu]

Runs both passes on the same frames and weights in each precision and prints relative errors against the
float32 run (max |a - b| / max |b|) and the IoU of the final masks.
"""

from __future__ import annotations

import argparse

import torch
from omegaconf import OmegaConf

from easi3r.frames import load_frames
from easi3r.pipeline import Stages, run
from easi3r.recipes import load_recipe


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-dir", default="tests/data/frames")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--preset", default="tiny_dpt")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    frames = load_frames(args.frames_dir, size=args.size, max_frames=args.frames)
    results = {}
    for precision in ("fp32", "bf16", "fp16"):
        recipe = load_recipe(
            "tiny",
            [
                f"backbone.preset={args.preset}",
                "backbone.checkpoint=random",
                f"backbone.device={args.device}",
                f"backbone.precision={precision}",
                "refine.k=16",
            ],
        )
        OmegaConf.resolve(recipe)
        results[precision] = run(recipe, frames, Stages.from_recipe(recipe))
    ref = results["fp32"]
    print(f"preset {args.preset}, {len(frames)} frames of {frames.size}, device {args.device}")
    print("| precision | pass-1 maps | pass-2 pts3d | pass-2 conf | dynamic map | mask IoU |")
    print("|---|---|---|---|---|---|")
    for precision in ("bf16", "fp16"):
        res = results[precision]
        p1, q1 = res.passes["pass1"].outputs.attention, ref.passes["pass1"].outputs.attention
        p2, q2 = res.passes["pass2"].outputs.predictions, ref.passes["pass2"].outputs.predictions
        ious = [mask_iou(a, b) for a, b in zip(res.masks.masks, ref.masks.masks)]
        print(
            f"| {precision} | {relative(p1.decoder1, q1.decoder1):.1e} | {relative(p2.pts3d_1, q2.pts3d_1):.1e} "
            f"| {relative(p2.conf_1, q2.conf_1):.1e} | {relative(res.masks.dynamic_map, ref.masks.dynamic_map):.1e} "
            f"| {min(ious):.3f} (min over frames) |"
        )


if __name__ == "__main__":
    main()
