"""What the Gram capture costs over a plain VGGT forward, in time and peak memory (same weights, inputs).

Variants, both the whole network (DINOv2 embedding, aggregator, camera/depth/point heads) on one window:

* ``plain``   the forward with fused attention everywhere;
* ``capture`` the same forward with the ``vggt4d`` recipe's Gram capture (five maps over global layers
  0, 3–7 and 17–21, offsets ±2, ±4, ±6) hooked into every global-attention layer, as pass 1 and 2 of
  ``vggt4d`` run it (with heads).

Time: the two variants alternate in one process, ``--repeat`` rounds; reported is each one's fastest
round (process CPU time with ``--clock cpu``, wall time otherwise). Peak memory: one fresh process per
variant runs one forward; reported is its peak resident size (``VmHWM``) over the whole process, model
included, and the ratio of the two.

    python benchmarks/bench_vggt.py --config tiny --frames 8 --repeat 5
    python benchmarks/bench_vggt.py --config vggt_1b --frames 4 --repeat 1 --warmup 0 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, read_status

from easi3r.attention import GlobalAttentionHook
from easi3r.backends.vggt.network import VGGTNetwork
from easi3r.backends.vggt.presets import PRESETS
from easi3r.recipes import load_recipe
from easi3r.strategies.gram_capture import GramCapture

# the maps of the recipes: vggt4d for VGGT-1B, vggt4d_tiny for the tiny preset
RECIPES = {"vggt_1b": "vggt4d", "tiny": "vggt4d_tiny"}


def setup(config: str, frames: int, height: int, width: int) -> tuple[VGGTNetwork, torch.Tensor, GramCapture]:
    torch.manual_seed(0)
    network = VGGTNetwork(PRESETS[config].config).eval()
    images = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(1))
    capture = load_recipe(RECIPES[config]).capture
    return network, images, GramCapture(dict(capture.maps), list(capture.offsets))


def forward(network: VGGTNetwork, images: torch.Tensor, capture: GramCapture | None) -> dict:
    """One window through the whole network; with ``capture``, the Gram maps too."""
    size = tuple(images.shape[-2:])
    hook = None
    if capture is not None:
        grid = (size[0] // network.patch_size, size[1] // network.patch_size)
        window = capture.window(len(images), grid)
        hook = GlobalAttentionHook(
            frames=len(images),
            special_tokens=network.patch_start_idx,
            capture=window,
            capture_layers=capture.layers,
        )
    with torch.no_grad():
        aggregated, start = network.aggregate(network.embed(images), size, hook)
        out = network.predict(aggregated, start, size)
        if capture is not None:
            out["maps"] = window.maps()
    return out


def _clock(name: str) -> Callable[[], float]:
    return time.process_time if name == "cpu" else time.perf_counter


def time_variants(args: argparse.Namespace) -> dict:
    network, images, capture = setup(args.config, args.frames, args.height, args.width)
    clock = _clock(args.clock)
    for _ in range(args.warmup):  # allocator, lazy initialisation
        forward(network, images, capture)
    rounds: dict[str, list[float]] = {"plain": [], "capture": []}
    for r in range(args.repeat):
        order = ("plain", "capture") if r % 2 == 0 else ("capture", "plain")
        for variant in order:
            start = clock()
            forward(network, images, capture if variant == "capture" else None)
            rounds[variant].append(clock() - start)
    best = {variant: min(times) for variant, times in rounds.items()}
    return {"rounds": rounds, "best_s": best, "time_ratio": best["capture"] / best["plain"]}


def peak_of(variant: str, args: argparse.Namespace) -> int:
    """The peak RSS of a fresh process that runs one forward of ``variant``."""
    command = [sys.executable, __file__, "--child", variant, *sys.argv[1:]]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak"])


def child(variant: str, args: argparse.Namespace) -> None:
    network, images, capture = setup(args.config, args.frames, args.height, args.width)
    forward(network, images, capture if variant == "capture" else None)
    print(json.dumps({"peak": read_status("VmHWM") or 0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(RECIPES), default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=294)
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="wall")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=("plain", "capture"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args.child, args)
        return
    timing = time_variants(args)
    peaks = {variant: peak_of(variant, args) for variant in ("plain", "capture")}
    result = {
        "machine": machine(),
        "config": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        **timing,
        "peak_bytes": peaks,
        "memory_ratio": peaks["capture"] / peaks["plain"],
    }
    best = timing["best_s"]
    print(
        f"{args.config}, {args.frames} frames of {args.width}×{args.height}, {args.threads} thread(s), "
        f"{args.clock} time: plain {best['plain']:.3f} s, capture {best['capture']:.3f} s "
        f"(×{timing['time_ratio']:.3f}); peak RSS plain {peaks['plain'] / 2**20:.0f} MiB, capture "
        f"{peaks['capture'] / 2**20:.0f} MiB (×{result['memory_ratio']:.3f})"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
