"""SEA-RAFT flow model: seconds per pair and peak memory on the CPU, at the pipeline's frame size.

    python benchmarks/bench_flow.py [--preset M] [--size 288 512] [--iters 20] [--threads 2] [--pairs 3]
                                    [--batch 1] [--json out.json]

Builds the ``sea_raft`` flow model of ``--preset`` with seeded random weights (the time does not depend on
their values), then times ``--pairs`` calls of
``model(images1, images2)`` on ``--batch`` pairs of ``--size`` (height, width) frames in [-1, 1], float32,
``--iters`` refinement iterations (20: the Easi3R reference's call), after one warm-up call. Reported: the
median and fastest wall time per pair, the median process CPU time per pair (all threads; less sensitive
than wall time to other jobs on a shared machine), the RSS with the model loaded, and the peak RSS during
the calls above it (``VmHWM`` after ``/proc/self/clear_refs``, minus the RSS at that moment; Linux only).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from common import machine, read_status  # benchmarks/ is on sys.path when a benchmark runs as a script

from easi3r.plugins import registry


def reset_peak() -> int | None:
    """Start a new peak-RSS window; the RSS at its start, or None where Linux cannot reset the peak."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return read_status("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="M")
    parser.add_argument("--size", type=int, nargs=2, default=[288, 512], metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3, help="timed calls")
    parser.add_argument("--batch", type=int, default=1, help="pairs per call")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    section = {"name": "sea_raft", "checkpoint": "random", "preset": args.preset, "iters": args.iters}
    model = registry("flow_models").create({**section, "device": "cpu"}, key="align.flow_model")
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, args.batch, 3, *args.size, generator=generator) * 2 - 1
    model(images[0], images[1])  # warm-up: first-call allocations and kernel selection
    base = reset_peak()
    model_rss = read_status("VmRSS")
    times, cpu_times = [], []
    for _ in range(args.pairs):
        start, cpu_start = time.perf_counter(), time.process_time()
        model(images[0], images[1])
        times.append((time.perf_counter() - start) / args.batch)
        cpu_times.append((time.process_time() - cpu_start) / args.batch)
    peak = read_status("VmHWM")
    result = {
        "machine": machine(),
        "threads": args.threads,
        "preset": args.preset,
        "size": args.size,
        "iters": args.iters,
        "batch": args.batch,
        "seconds_per_pair_median": statistics.median(times),
        "seconds_per_pair_min": min(times),
        "cpu_seconds_per_pair_median": statistics.median(cpu_times),
        "rss_with_model_mb": model_rss / 2**20 if model_rss else None,
        "peak_above_model_mb": (peak - base) / 2**20 if peak and base else None,
    }
    print(
        f"SEA-RAFT {args.preset}, {args.size[1]}×{args.size[0]}, {args.iters} iterations, fp32, "
        f"{args.threads} threads, batch {args.batch}: {result['seconds_per_pair_median']:.2f} s/pair "
        f"(min {result['seconds_per_pair_min']:.2f}, CPU time {result['cpu_seconds_per_pair_median']:.2f} s); "
        f"RSS with the model {result['rss_with_model_mb']:.0f} MiB, "
        f"peak above it {result['peak_above_model_mb']:.0f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
