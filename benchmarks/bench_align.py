"""Global alignment: cost against the number of frames, and accuracy against perturbed pair predictions.

    python benchmarks/bench_align.py [--frames 10 50 200] [--size 144 256] [--iters 20] [--json out.json]

Scaling (one fresh subprocess per frame count): a synthetic scene (``easi3r.synthetic.make_scene``, seed 0)
of T frames at H×W, its ``swinstride-5-noncyclic`` pair graph (``make_pairs(..., cap_window=True)``, as
the pipeline builds it) and ``pair_predictions`` with 1 % depth noise (so the residuals are not all zero).
Then, with the ``global`` aligner's defaults (``AlignConfig()``):

* **init**: ``global_align(..., iters=0)``, i.e. everything before the first Adam step (input checks,
  per-frame confidence, spanning-tree initialisation with its batched Procrustes and PnP, the aligner's
  parameters) plus the scene assembly;
* **iterations**: ``global_align(..., init_state=<that init>, iters=warmup + iters)``, with the
  ``progress`` callback reading the clock after every step, so a step is exactly the production loop
  (learning rate, zero_grad, forward, backward, Adam, loss read-back); the first ``--warmup`` steps are
  dropped, the table gives the median (and the fastest) of the rest;
* **kernel share, page faults**: ``getrusage`` over the optimisation call (fresh pages for the large
  per-step temporaries are a large part of the cost on some machines; ``--thp`` runs the workers with
  ``THP_MEM_ALLOC_ENABLE=1``, PyTorch's switch for transparent huge pages);
* **peak memory**: before each phase the freed heap is handed back (``malloc_trim``) and the peak RSS is
  reset (``/proc/self/clear_refs``); reported is ``VmHWM`` minus the RSS at the reset, i.e. what the
  phase needs on top of the predictions already in memory (fallback: ``ru_maxrss`` delta, which cannot be
  reset and so may include the synthetic-data generation; the method is printed).

On a CPU shared with other jobs, ``--threads 1 --clock cpu`` (the defaults: process CPU time of one
thread) gives reproducible numbers; wall time with several threads mostly measures the neighbours.

Accuracy: an 8-frame 48×64 scene, the same graph, 300 iterations (the reference's), every combination
of Gaussian noise (std relative to depth) and outlier fraction (depth ×[1/3, 3] plus lateral jitter, at
ordinary confidence); ATE after Sim(3) alignment divided by the room size, and the relative focal error.

``--hotspots T`` profiles the 3D term composed of autograd's operators at T frames (torch profiler, top
operators by self CPU time, the parts timed one by one), which is how the aligner computed it before,
and times it against the aligner's fused residual with its hand-written backward (``GlobalAligner.forward``)
and against a candidate that keeps the fused residual's buffers across steps (gradients compared).
docs/geometry.md has the measured tables and the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import machine, read_status  # benchmarks/ is on sys.path when a benchmark runs as a script
from torch import Tensor

from easi3r.eval import metrics
from easi3r.pairs import make_pairs
from easi3r.strategies.global_align import AlignConfig, AlignState, GlobalAligner, global_align
from easi3r.strategies.global_align.model import _affine, _PairResidual
from easi3r.synthetic import SyntheticScene, make_scene, pair_predictions
from easi3r.types import PairPredictions

SCALING_NOISE = 0.01


# --------------------------------------------------------------------------------------------------
# memory: peak RSS of a phase, in a process of its own


def _trim_heap() -> None:
    """Hand freed heap memory back to the system, so that the next phase's allocations show in the RSS
    instead of silently reusing what an earlier phase left behind."""
    gc.collect()
    # not glibc: nothing to trim, and the peak may then be slightly under-reported
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMeter:
    """Peak RSS over a phase: ``VmHWM`` after ``/proc/self/clear_refs`` where Linux allows it."""

    def __init__(self) -> None:
        self.method = "ru_maxrss delta (not resettable)"
        self.base = 0

    def reset(self) -> None:
        _trim_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            ok = read_status("VmHWM") is not None
        except OSError:
            ok = False
        if ok:
            self.method = "VmHWM after clear_refs, minus VmRSS at the reset"
            self.base = read_status("VmRSS") or 0
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak(self) -> int:
        if self.method.startswith("VmHWM"):
            return (read_status("VmHWM") or 0) - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def _clock(name: str) -> Callable[[], float]:
    return time.process_time if name == "cpu" else time.perf_counter


# --------------------------------------------------------------------------------------------------
# scaling: one worker process per frame count


def _synthetic(
    n_frames: int, size: tuple[int, int], graph: str, noise: float, outliers: float, seed: int
) -> tuple[SyntheticScene, Tensor, PairPredictions]:
    scene = make_scene(n_frames=n_frames, size=size, seed=0)
    pairs = make_pairs(graph, n_frames, cap_window=True)
    preds = pair_predictions(scene, pairs, noise=noise, outlier_frac=outliers, seed=seed)
    return scene, pairs, preds


def scaling_worker(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    clock = _clock(args.clock)
    n_frames, size = args._worker, tuple(args.size)
    _, pairs, preds = _synthetic(n_frames, size, args.graph, SCALING_NOISE, 0.0, 0)  # scene freed here
    meter = PeakMeter()
    meter.reset()
    inputs_rss = meter.base
    start = clock()
    first = global_align(preds, pairs, n_frames, size, config=AlignConfig(iters=0))
    init_s = clock() - start
    init_peak = meter.peak()
    init_state = first.init
    del first

    stamps: list[float] = []
    meter.reset()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = clock()
    result = global_align(
        preds,
        pairs,
        n_frames,
        size,
        config=AlignConfig(iters=args.warmup + args.iters),
        init_state=init_state,
        progress=lambda step, total, loss: stamps.append(clock()),
    )
    total_s = clock() - start
    opt_peak = meter.peak()
    after = resource.getrusage(resource.RUSAGE_SELF)
    n_steps = args.warmup + args.iters
    # kernel time and page faults: fresh pages for the large per-step temporaries are a real cost
    sys_share = (after.ru_stime - usage.ru_stime) / max(
        1e-9, after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
    )
    steps = [b - a for a, b in itertools.pairwise(stamps)][args.warmup - 1 :]  # stamps[0] ends step 0
    n_pairs, (height, width) = len(pairs), size
    out = {
        "frames": n_frames,
        "size": list(size),
        "pairs": n_pairs,
        "pair_pixels": 2 * n_pairs * height * width,
        "ms_per_iter_median": 1e3 * statistics.median(steps),
        "ms_per_iter_min": 1e3 * min(steps),
        "ms_per_iter_all": [1e3 * s for s in steps],
        "init_s": init_s,
        "optimise_call_s": total_s,
        "inputs_rss_bytes": inputs_rss,
        "init_peak_bytes": init_peak,
        "optimise_peak_bytes": opt_peak,
        "memory_method": meter.method,
        "kernel_share_of_cpu": sys_share,
        "minor_faults_per_iter": (after.ru_minflt - usage.ru_minflt) / n_steps,
        "loss_first_last": [result.loss_history[0], result.loss_history[-1]],
    }
    if args.hotspots == n_frames:
        out["hotspots"] = hotspots(preds, pairs, n_frames, init_state, args)
    return out


def run_worker(args: argparse.Namespace, n_frames: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *_forward_args(args), "--_worker", str(n_frames)]
    env = dict(os.environ)
    if args.thp:
        # PyTorch's CPU allocator then asks for transparent huge pages (madvise) on blocks ≥ 2 MiB:
        # 512× fewer page faults for the large per-step temporaries
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {n_frames} frames failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _forward_args(args: argparse.Namespace) -> list[str]:
    out = ["--size", *map(str, args.size)]
    for name in ("iters", "warmup", "threads", "clock", "graph", "hotspots"):
        out += [f"--{name}", str(getattr(args, name))]
    return out


# --------------------------------------------------------------------------------------------------
# hot spots: where a step's time goes, and what the fused residual saves


class _BufferedPairResidual(torch.autograd.Function):
    """The aligner's fused residual (``strategies/global_align/model.py::_PairResidual``) keeping its residual
    and distance tensors in ``buffers`` (a dict, one per view) from one step to the next, so that a step
    touches no fresh pages. A candidate, not used by the aligner: only one forward may be in flight per
    dict, and the buffers stay allocated between steps."""

    @staticmethod
    def forward(
        ctx: Any,
        rows: Tensor,
        index: Tensor,
        pred: Tensor,
        rot: Tensor,
        trans: Tensor,
        weight: Tensor,
        buffers: dict,
    ) -> Tensor:
        if "diff" not in buffers or buffers["diff"].shape != pred.shape:
            buffers["diff"], buffers["dist"] = pred.new_empty(pred.shape), pred.new_empty(pred.shape[:2])
        diff = buffers["diff"]
        torch.index_select(rows, 0, index, out=diff.view(len(pred), -1))
        diff.baddbmm_(pred, rot.transpose(1, 2), alpha=-1).sub_(trans[:, None])
        dist = torch.linalg.vector_norm(diff, dim=-1, out=buffers["dist"])
        ctx.save_for_backward(diff, dist, index, pred, weight)
        ctx.n_rows = rows.shape[0]
        return torch.dot(dist.flatten(), weight.flatten())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return (*_PairResidual.backward(ctx, grad), None)


def _buffered_loss(aligner: GlobalAligner, buffers: tuple[dict, dict]) -> Tensor:
    """``GlobalAligner.forward`` (no temporal term) with :class:`_BufferedPairResidual`."""
    rows = aligner.world_points().flatten(1)
    trf = aligner.pair_poses()
    rot, trans = trf[:, :3, :3], trf[:, :3, 3]
    loss1 = _BufferedPairResidual.apply(rows, aligner.ei, aligner.pred1, rot, trans, aligner.w1, buffers[0])
    loss2 = _BufferedPairResidual.apply(rows, aligner.ej, aligner.pred2, rot, trans, aligner.w2, buffers[1])
    return loss1 / aligner.area + loss2 / aligner.area


def _autograd_loss(aligner: GlobalAligner) -> Tensor:
    """The 3D term composed of autograd's operators, as the aligner computed it before its fused residual."""
    world = aligner.world_points()
    trf = aligner.pair_poses()
    rows = world.flatten(1)
    loss = world.new_zeros(())
    for index, pred, weight in (
        (aligner.ei, aligner.pred1, aligner.w1),
        (aligner.ej, aligner.pred2, aligner.w2),
    ):
        dist = (rows.index_select(0, index).view_as(pred) - _affine(trf, pred)).norm(dim=-1)
        loss = loss + (dist * weight).sum() / aligner.area
    return loss


def _loss_breakdown(aligner: GlobalAligner, clock: Callable[[], float]) -> dict[str, float]:
    """Time of the parts of one forward + backward of the 3D term, from the world points and pair
    similarities on (their own computation is small: per frame and per pair, not per pair-pixel)."""
    world = aligner.world_points().detach().requires_grad_()
    trf = aligner.pair_poses().detach().requires_grad_()
    rows = world.flatten(1)
    parts: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Tensor]) -> Tensor:
        start = clock()
        out = fn()
        parts[name] = parts.get(name, 0.0) + clock() - start
        return out

    loss = world.new_zeros(())
    for index, pred, weight in (
        (aligner.ei, aligner.pred1, aligner.w1),
        (aligner.ej, aligner.pred2, aligner.w2),
    ):
        gathered = timed("gather world rows (index_select)", lambda i=index: rows.index_select(0, i))
        moved = timed("pair similarity on predictions (baddbmm)", lambda p=pred: _affine(trf, p))
        diff = timed("subtraction", lambda g=gathered, m=moved: g.view_as(m) - m)
        dist = timed("norm over xyz", lambda d=diff: d.norm(dim=-1))
        loss = loss + timed("weighting and sum", lambda d=dist, w=weight: (d * w).sum())
    timed("backward (all of the above)", lambda: loss.backward())
    return parts


def hotspots(
    preds: PairPredictions, pairs: Tensor, n_frames: int, init_state: AlignState, args: argparse.Namespace
) -> dict:
    from torch.profiler import ProfilerActivity, profile

    clock = _clock(args.clock)
    aligner = GlobalAligner(preds, pairs, n_frames, init_state, AlignConfig())
    params = [p for p in aligner.parameters() if p.requires_grad]

    def forward_backward(loss_fn: Callable[[GlobalAligner], Tensor]) -> tuple[float, float]:
        for p in params:
            p.grad = None
        start = clock()
        loss = loss_fn(aligner)
        loss.backward()
        return clock() - start, float(loss.detach())

    forward_backward(_autograd_loss)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            forward_backward(_autograd_loss)
    ops = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    top = [
        {
            "op": e.key,
            "shapes": str(e.input_shapes)[:80],
            "calls_per_step": e.count / 2,
            "self_ms_per_step": e.self_cpu_time_total / 2e3,
        }
        for e in ops[:12]
    ]
    runs = [_loss_breakdown(aligner, clock) for _ in range(3)]
    breakdown = {k: 1e3 * min(r[k] for r in runs) for k in runs[0]}  # the fastest of 3 for each part

    kept: tuple[dict, dict] = ({}, {})
    variants: dict[str, Callable[[GlobalAligner], Tensor]] = {
        "autograd operators (before)": _autograd_loss,
        "fused residual (GlobalAligner.forward)": GlobalAligner.forward,
        "fused residual, buffers kept across steps": lambda a: _buffered_loss(a, kept),
    }
    # the same gradient? (then interleaved timing, the fastest of the rounds of each)
    forward_backward(_autograd_loss)
    ref = [p.grad.clone() for p in params]
    grad_rel = {}
    for name, fn in list(variants.items())[1:]:
        forward_backward(fn)
        grad_rel[name] = max(
            float((p.grad - r).abs().max() / r.abs().max().clamp_min(1e-30)) for p, r in zip(params, ref)
        )
    del ref
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int] = {}
    faults: dict[str, float] = {}
    meter = PeakMeter()
    for _ in range(3):
        for name, fn in variants.items():
            meter.reset()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[name].append(forward_backward(fn)[0])
            faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            peaks[name] = max(peaks.get(name, 0), meter.peak())
    kept_bytes = sum(t.numel() * t.element_size() for buf in kept for t in buf.values())
    return {
        "top_ops": top,
        "breakdown_ms": breakdown,
        "grad_max_rel_diff": grad_rel,
        "forward_backward_ms_min": {k: 1e3 * min(v) for k, v in times.items()},
        "forward_backward_peak_bytes": peaks,
        "forward_backward_page_faults": faults,
        "kept_buffer_bytes": kept_bytes,
        "memory_method": meter.method,
    }


# --------------------------------------------------------------------------------------------------
# accuracy against perturbation


def accuracy(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    n_frames, size = args.acc_frames, tuple(args.acc_size)
    scene = make_scene(n_frames=n_frames, size=size, seed=0)
    pairs = make_pairs(args.graph, n_frames, cap_window=True)
    gt_focal = float(scene.intrinsics[0, 0, 0])
    rows = []
    for noise in args.noise:
        for outliers in args.outliers:
            runs = []
            for seed in args.seeds:
                preds = pair_predictions(scene, pairs, noise=noise, outlier_frac=outliers, seed=seed)
                result = global_align(preds, pairs, n_frames, size, config=AlignConfig(iters=args.acc_iters))
                runs.append(
                    (
                        metrics.ate(result.init.cam2world, scene.cam2world) / scene.extent,
                        metrics.ate(result.scene.cam2world, scene.cam2world) / scene.extent,
                        abs(float(result.init.focals[0]) / gt_focal - 1),
                        abs(float(result.scene.focals[0]) / gt_focal - 1),
                    )
                )
            med = [statistics.median(col) for col in zip(*runs)]
            rows.append(
                {
                    "noise": noise,
                    "outliers": outliers,
                    "ate_init": med[0],
                    "ate": med[1],
                    "focal_err_init": med[2],
                    "focal_err": med[3],
                    "per_seed": runs,
                }
            )
            print(f"  accuracy noise {noise:g} outliers {outliers:g}: ATE {med[1]:.2e}", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------------------------------
# report


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def scaling_markdown(rows: list[dict]) -> str:
    lines = [
        "| frames | pairs | pair-pixels per iteration (P·H·W·2) | ms / iteration (median, fastest) "
        "| µs per 1000 pair-pixels | init s | peak MiB, init | peak MiB, iterations | resident before, MiB "
        "| kernel share of CPU | page faults / iteration |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_k = 1e3 * r["ms_per_iter_median"] / (r["pair_pixels"] / 1e3)
        lines.append(
            f"| {r['frames']} | {r['pairs']} | {r['pair_pixels']:,} | {r['ms_per_iter_median']:.0f} "
            f"({r['ms_per_iter_min']:.0f}) | {per_k:.2f} | {r['init_s']:.2f} | {_mib(r['init_peak_bytes'])} "
            f"| {_mib(r['optimise_peak_bytes'])} | {_mib(r['inputs_rss_bytes'])} "
            f"| {r['kernel_share_of_cpu']:.0%} | {r['minor_faults_per_iter']:,.0f} |"
        )
    if len(rows) > 1:
        lines += [
            "",
            "| growth | frames | pairs | pair-pixels | ms / iteration | init s | peak, init | peak, iterations |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        keys = ("frames", "pairs", "pair_pixels", "ms_per_iter_median", "init_s", "init_peak_bytes")
        for a, b in itertools.pairwise(rows):
            ratios = [b[k] / a[k] for k in keys] + [b["optimise_peak_bytes"] / a["optimise_peak_bytes"]]
            lines.append(
                f"| {b['frames']} / {a['frames']} | " + " | ".join(f"{x:.2f}×" for x in ratios) + " |"
            )
    return "\n".join(lines)


def accuracy_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    def grid(title: str, key: str, init_key: str) -> list[str]:
        head = " | ".join(f"outliers {o:.0%}" for o in args.outliers)
        out = [
            f"{title} (spanning-tree init → after {args.acc_iters} iterations)",
            "",
            f"| noise (std / depth) | {head} |",
            "|---:|" + "---:|" * len(args.outliers),
        ]
        for noise in args.noise:
            cells = [r for r in rows if r["noise"] == noise]
            out.append(
                f"| {noise:.1%} | " + " | ".join(f"{c[init_key]:.1e} → {c[key]:.1e}" for c in cells) + " |"
            )
        return out

    return "\n".join(
        [
            *grid("ATE / scene size", "ate", "ate_init"),
            "",
            *grid("relative focal error |f / f_gt − 1|", "focal_err", "focal_err_init"),
        ]
    )


def hotspots_markdown(h: dict, n_frames: int) -> str:
    lines = [
        f"Hot spots at {n_frames} frames (one forward + backward of the loss, process CPU time):",
        "",
        "| operator | input shapes | calls / step | self ms / step |",
        "|---|---|---:|---:|",
    ]
    for op in h["top_ops"]:
        lines.append(
            f"| {op['op']} | {op['shapes']} | {op['calls_per_step']:g} | {op['self_ms_per_step']:.0f} |"
        )
    lines += ["", "| part of the loss (fastest of 3) | ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in h["breakdown_ms"].items()]
    lines += [
        "",
        "| loss implementation | forward + backward ms (fastest of 3) | peak MiB | page faults "
        "| max relative gradient difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ms in h["forward_backward_ms_min"].items():
        diff = h["grad_max_rel_diff"].get(name)
        lines.append(
            f"| {name} | {ms:.0f} | {_mib(h['forward_backward_peak_bytes'][name])} "
            f"| {h['forward_backward_page_faults'][name]:,.0f} | {'—' if diff is None else f'{diff:.1e}'} |"
        )
    lines.append(
        "\nPeak: over the resident size at the start of the call, so the kept buffers (residual and "
        f"distance of both views, {_mib(h['kept_buffer_bytes'])} MiB) are not in it."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--size", type=int, nargs=2, default=[144, 256], metavar=("H", "W"))
    p.add_argument("--iters", type=int, default=20, help="timed iterations per frame count")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before them (≥ 1)")
    p.add_argument("--graph", default="swinstride-5-noncyclic")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="cpu",
        help="cpu: process CPU time (needs --threads 1), robust on a shared machine; wall: perf_counter",
    )
    p.add_argument("--thp", action="store_true", help="run the workers with THP_MEM_ALLOC_ENABLE=1")
    p.add_argument("--hotspots", type=int, default=0, metavar="T", help="profile the loss at T frames")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--acc-frames", type=int, default=8)
    p.add_argument("--acc-size", type=int, nargs=2, default=[48, 64], metavar=("H", "W"))
    p.add_argument("--acc-iters", type=int, default=300)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02, 0.05])
    p.add_argument("--outliers", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="prediction seeds (median reported)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--_worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be ≥ 1 (the first step's time includes the aligner's setup)")
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu adds up the CPU time of all threads: use --threads 1, or --clock wall")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._worker is not None:
        print(json.dumps(scaling_worker(args)))
        return
    wall = time.perf_counter()
    payload: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    payload["machine"] = machine()
    out: list[str] = []
    if not args.no_scaling:
        rows = []
        for n_frames in sorted(args.frames):
            rows.append(run_worker(args, n_frames))
            print(f"  {n_frames} frames: {rows[-1]['ms_per_iter_median']:.0f} ms/iteration", file=sys.stderr)
        payload["scaling"] = rows
        h, w = args.size
        out += [
            f"Scaling: {h}×{w}, graph {args.graph} (capped window), {args.threads} thread(s), {args.clock} "
            f"clock, {args.iters} timed iterations after {args.warmup}, allocator "
            f"{'THP_MEM_ALLOC_ENABLE=1' if args.thp else 'default'}; memory: {rows[0]['memory_method']}",
            "",
            scaling_markdown(rows),
        ]
        for r in rows:
            if "hotspots" in r:
                out += ["", hotspots_markdown(r["hotspots"], r["frames"])]
    if not args.no_accuracy:
        acc = accuracy(args)
        payload["accuracy"] = acc
        h, w = args.acc_size
        out += [
            "",
            f"Accuracy: {args.acc_frames} frames of {h}×{w}, {args.acc_iters} iterations, prediction seeds "
            f"{args.seeds} (median)",
            "",
            accuracy_markdown(acc, args),
        ]
    wall = time.perf_counter() - wall
    payload["wall_s"] = wall
    print("\n".join(out))
    print(f"\n{payload['machine']['cpu']}, torch {torch.__version__}; wall time of the command {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
