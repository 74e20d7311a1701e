"""Long videos: peak memory and time of whole ``easi3r run`` jobs against the number of frames.

    python benchmarks/bench_scale.py [--frames 30 300] [--threads 2] [--json out.json] [key=value ...]
    python benchmarks/bench_scale.py --recipe vggt4d_tiny --frames 50 200

For each frame count a synthetic clip (``easi3r.demo.write_demo_video``: the demo's rendered room, 256×144)
is written, and ``easi3r run CLIP -r tiny scale.stream=true scale.align_window=30 ...`` runs in a fresh
process, so each peak is that run's alone. Reported per run: ordered pairs per pass, wall time, the peak
resident memory (the child's ``ru_maxrss`` from ``wait4``), the estimate the run printed before starting
(``easi3r.estimate``), and the peak relative to the first (smallest) run. Extra ``key=value`` arguments
are recipe overrides given to every run (e.g. ``align.iters=20`` for a quick check).

Every stage whose memory grows with the video is bounded here: pair outputs stream to the run cache in
chunks, alignment runs in windows of 30 frames; what remains proportional to the frame count are the
frames themselves, the encoder tokens, the captured maps and the per-frame results (a few floats per
pixel and frame). The target (issue 5): 300 frames within 1.5× the peak of 30 frames.

``--recipe vggt4d_tiny`` measures a frame-set backbone instead (the tiny VGGT, the VGGT4D-style recipe):
its windows of 50 frames sharing 8 (``scale.align_window=50 scale.align_overlap=8``, vggt4d's) bound the
forward; the target (issue 11): 200 frames within 1.5× the peak of 50 frames.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

# what each recipe runs with, on top of the recipe: its bounded-memory settings
DEFAULTS = {
    "tiny": ("scale.stream=true", "scale.align_window=30"),
    "vggt4d_tiny": ("scale.align_window=50", "scale.align_overlap=8"),
}
ESTIMATE = re.compile(
    r"(\d+) frames of \d+×\d+(?:, (\d+) pairs per pass| in (\d+) window\(s\) of up to \d+ frames); "
    r"estimated peak memory ([\d.]+) GiB"
)


def run_once(clip: Path, out: Path, recipe: str, overrides: list[str], threads: int) -> dict:
    env = {**os.environ, "EASI3R_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "easi3r",
        "run",
        str(clip),
        "-o",
        str(out),
        "-r",
        recipe,
        *DEFAULTS[recipe],
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed on {clip}:\n{stderr}")
    found = ESTIMATE.search(stderr)
    return {
        "frames": int(found.group(1)),
        "units": f"{found.group(2)} pairs" if found.group(2) else f"{found.group(3)} windows",
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # Linux reports KiB
        "estimate_gib": float(found.group(4)),
        "stdout": stdout.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", choices=sorted(DEFAULTS), default="tiny")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    from easi3r.demo import write_demo_video

    rows = []
    with tempfile.TemporaryDirectory(prefix="easi3r-bench-scale-") as tmp:
        for n in args.frames:
            clip = write_demo_video(Path(tmp) / f"clip{n}.mp4", n_frames=n)
            rows.append(run_once(clip, Path(tmp) / f"out{n}", args.recipe, args.overrides, args.threads))
            print(f"{n} frames done: {rows[-1]}", file=sys.stderr)
    base = rows[0]["peak_rss_mib"]
    print(
        f"machine: {machine()}; recipe {args.recipe}, overrides: "
        f"{' '.join([*DEFAULTS[args.recipe], *args.overrides])}; threads {args.threads}\n"
    )
    print("| frames | per pass | wall | peak RSS | estimate | peak vs first |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['frames']} | {row['units']} | {row['wall_s']:.0f} s | {row['peak_rss_mib']} MiB "
            f"| {row['estimate_gib'] * 1024:.0f} MiB | {row['peak_rss_mib'] / base:.2f}× |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
