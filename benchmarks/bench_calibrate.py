"""``easi3r calibrate`` on synthetic sequences: wall time, peak memory and the AUCs it reports.

    python benchmarks/bench_calibrate.py [--sequences 8] [--frames 10] [--texture pattern] [--recipe tiny]

``easi3r synth`` writes the sequences (144×256, two moving objects, orbiting camera), then ``easi3r
calibrate --dataset synthetic`` runs in a fresh process, so its peak (``ru_maxrss`` from ``wait4``) is its
own. The issue's target: 8 sequences of 10 frames with the tiny model in under 5 minutes on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine


def easi3r(args: list[str], threads: int) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one ``easi3r`` process."""
    env = {**os.environ, "EASI3R_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "easi3r", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"easi3r {' '.join(args)} failed:\n{stderr}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--texture", default="pattern", help="easi3r synth --texture")
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="easi3r-bench-calibrate-") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "report"
        synth = ["synth", "-o", str(data), "--sequences", str(args.sequences), "--frames", str(args.frames),
                 "--texture", args.texture]  # fmt: skip
        synth_seconds, _ = easi3r(synth, args.threads)
        calibrate = ["calibrate", "--dataset", "synthetic", "--root", str(data), "--sequences", "all"]
        seconds, peak = easi3r([*calibrate, "-o", str(out), "--recipe", args.recipe], args.threads)
        search = json.loads((out / "search.json").read_text())
        ranking = json.loads((out / "ranking.json").read_text())["candidates"]
    best = ranking[0]
    result = {
        "machine": machine(),
        "sequences": args.sequences,
        "frames": args.frames,
        "texture": args.texture,
        "recipe": args.recipe,
        "synth_seconds": round(synth_seconds, 1),
        "calibrate_seconds": round(seconds, 1),
        "calibrate_peak_mib": round(peak / 2**20),
        "candidates": len(ranking),
        "best_candidate": {
            "term": best["candidate"],
            "selection_auc": best["selection"]["auc"],
            "report_auc": best["report"]["auc"],
        },
        "formula": search["formula"],
        "formula_selection_auc": search["selection_auc"],
        "formula_report_auc": search["report_auc"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
