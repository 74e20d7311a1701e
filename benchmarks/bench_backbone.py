"""Time and peak memory of the backbone paths: vanilla DUSt3R, the two Easi3R passes, a naive reference.

Variants (same seeded random weights and inputs for all):

* ``a``      vanilla ``CroCoStereo.forward(img1, img2)`` per pair, heads on, batch of 1 pair;
* ``a_dec``  the decoder part of (a): ``CroCoBackbone.decode(capture=None, heads=False)`` on cached
  encodings;
* ``b_dec``  ``decode(capture=query_mean, heads=False)`` on the same cached encodings, same batch size;
* ``b``      pass 1 as the pipeline runs it: encode every frame once, then ``b_dec``;
* ``c``      pass 2 as the pipeline runs it (default recipe): ``decode(capture=query_mean,
  reweight=Reweight(zero_dynamic_keys, token_masks), heads=True)`` on the cached encodings, ~20 % dynamic tokens;
* ``d1``/``d2`` a naive per-pair implementation shaped like the reference (reference-notes §1.2, §5.3,
  §10.13): both images re-encoded for every pair (batch of 2, explicit softmax attention whose logits
  are cloned like the reference's), every self- and cross-attention logit tensor of both decoders
  materialised and kept until the pair finishes, then the cross logits concatenated and reduced by the
  query mean; heads on; pass 2 zeroes (static query, dynamic key) weights after the softmax (the
  ``post_softmax_oracle`` rule) in decoder 1's cross-attention.

Time: per pair (per frame for the encoder); the variants run interleaved pair by pair (decode batch
by decode batch) in alternating order, ``--repeat`` rounds; reported is, per pair, the fastest round,
averaged over the pairs (the per-round means are in the JSON). On a CPU shared with other processes,
``--threads 1 --clock cpu`` (process CPU time of one thread) gives reproducible numbers; wall time with
several threads there mostly measures the neighbours.

Peak memory: one fresh subprocess per variant; after setup (model, inputs, and for the decode-only
variants the cached encodings) and an optional warm-up run, the peak is reset and the variant runs;
reported is the peak minus the resident size at the reset (CPU: ``VmHWM`` after
``/proc/self/clear_refs``, glibc told to return large blocks to the system; fallback ``ru_maxrss``)
or ``torch.cuda.max_memory_allocated`` minus the allocation at the reset (CUDA). Model weights are
part of the baseline, so the numbers are what each variant needs on top of them.

Examples (docs/performance.md has the measured tables)::

    python benchmarks/bench_backbone.py --config tiny --repeat 3 --threads 1 --clock cpu
    python benchmarks/bench_backbone.py --config vitl512 --pairs 2 --memory-only --json vitl_mem.json
    python benchmarks/bench_backbone.py --config vitl512 --pairs 1 --repeat 2 --warmup 0 \
        --threads 1 --clock cpu --no-check --memory-json vitl_mem.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine, read_status  # benchmarks/ is on sys.path when a benchmark runs as a script
from torch import Tensor

from easi3r.attention import Reweight, pixel_to_token_masks
from easi3r.backends.adapter import CroCoBackbone
from easi3r.backends.croco import Attention, CroCoStereo, CrossAttention, DecoderBlock
from easi3r.backends.presets import PRESETS
from easi3r.pairs import make_pairs
from easi3r.strategies.capture import query_mean
from easi3r.strategies.reweight import zero_dynamic_keys
from easi3r.types import Encoded

CONFIGS = {"tiny": "tiny", "vitl512": "vitl_512_dpt", "tiny_dpt": "tiny_dpt"}
TIME_VARIANTS = ("a", "a_dec", "b_dec", "c", "d1", "d2")  # plus "encode", timed per frame
MEM_VARIANTS = ("a", "a_dec", "b_dec", "b", "c", "d1", "d2")
DYNAMIC_FRACTION = 0.2


# --------------------------------------------------------------------------------------------------
# (d): the naive per-pair implementation, shaped like the reference, on this project's modules


def _naive_self_attention(attn: Attention, x: Tensor, pos: Tensor, keep: list[Tensor] | None) -> Tensor:
    """Explicit softmax attention; the logits are cloned (and kept if ``keep`` is given)."""
    b, n, c = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.rope(q, pos), attn.rope(k, pos)
    logits = (q @ k.transpose(-1, -2)) * attn.scale
    clone = logits.detach().clone()  # the reference clones every logit tensor, used or not
    if keep is not None:
        keep.append(clone)
    out = logits.softmax(dim=-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def _naive_cross_attention(
    ca: CrossAttention,
    query: Tensor,
    memory: Tensor,
    qpos: Tensor,
    kpos: Tensor,
    keep: list[Tensor],
    qmask: Tensor | None,
    kmask: Tensor | None,
) -> Tensor:
    """Explicit softmax cross-attention, logits kept; with masks, (static query, dynamic key) weights
    are zeroed after the softmax without renormalising (the ``post_softmax_oracle`` rule)."""
    b, nq, c = query.shape
    q = ca.rope(ca._heads(ca.projq(query)), qpos)
    k = ca.rope(ca._heads(ca.projk(memory)), kpos)
    v = ca._heads(ca.projv(memory))
    logits = (q @ k.transpose(-1, -2)) * ca.scale
    keep.append(logits.detach().clone())
    attn = logits.softmax(dim=-1)
    if qmask is not None and kmask is not None:
        drop = (~qmask)[:, None, :, None] & kmask[:, None, None, :]
        attn = torch.where(drop, torch.zeros((), dtype=attn.dtype), attn)
    out = attn @ v
    return ca.proj(out.transpose(1, 2).reshape(b, nq, c))


def _naive_decoder_block(
    blk: DecoderBlock,
    x: Tensor,
    y: Tensor,
    xpos: Tensor,
    ypos: Tensor,
    keep_self: list[Tensor],
    keep_cross: list[Tensor],
    qmask: Tensor | None = None,
    kmask: Tensor | None = None,
) -> Tensor:
    x = x + _naive_self_attention(blk.attn, blk.norm1(x), xpos, keep_self)
    y_ = blk.norm_y(y)
    x = x + _naive_cross_attention(blk.cross_attn, blk.norm2(x), y_, xpos, ypos, keep_cross, qmask, kmask)
    return x + blk.mlp(blk.norm3(x))


def _query_mean_of_kept(kept: list[Tensor], n_tokens: int) -> Tensor:
    """Like the reference's reduction (batch 1): concatenate the layers' logits, mean over queries."""
    logits = torch.cat(kept)  # (layers, heads, Nq, Nk): one more full copy, as in the reference
    return logits.mean(dim=2).reshape(-1, n_tokens).T  # (Nk, layers·heads), c = layer·heads + head


@torch.inference_mode()
def naive_pair(
    model: CroCoStereo,
    img1: Tensor,
    img2: Tensor,
    mask1: Tensor | None = None,
    mask2: Tensor | None = None,
) -> dict[str, Tensor]:
    """One ordered pair the reference's way (batch 1). Masks ``(1, N)`` bool turn on pass 2."""
    shape = img1.shape[-2:]
    x, pos = model.patch_embed(torch.cat((img1, img2)))  # both images re-encoded for every pair
    for blk in model.enc_blocks:
        x = x + _naive_self_attention(blk.attn, blk.norm1(x), pos, None)
        x = x + blk.mlp(blk.norm2(x))
    x = model.enc_norm(x)
    e1, e2 = x.chunk(2)
    p1, p2 = pos.chunk(2)
    f1, f2 = model.decoder_embed(e1), model.decoder_embed(e2)
    self1: list[Tensor] = []
    cross1: list[Tensor] = []
    self2: list[Tensor] = []
    cross2: list[Tensor] = []
    out1, out2 = [e1], [e2]
    for blk1, blk2 in zip(model.dec_blocks, model.dec_blocks2):
        f1, f2 = (
            _naive_decoder_block(blk1, f1, f2, p1, p2, self1, cross1, mask1, mask2),
            _naive_decoder_block(blk2, f2, f1, p2, p1, self2, cross2),
        )
        out1.append(f1)
        out2.append(f2)
    out1[-1], out2[-1] = model.dec_norm(out1[-1]), model.dec_norm(out2[-1])
    res1 = model.downstream_head1(out1, shape)
    res2 = model.downstream_head2(out2, shape)
    n = e1.shape[1]
    maps1 = _query_mean_of_kept(cross1, n)
    maps2 = _query_mean_of_kept(cross2, n)
    del self1, self2, cross1, cross2  # all 4·layers logit tensors lived until here
    return dict(
        pts3d_1=res1["pts3d"],
        conf_1=res1["conf"],
        pts3d_2=res2["pts3d"],
        conf_2=res2["conf"],
        maps1=maps1,
        maps2=maps2,
    )


# --------------------------------------------------------------------------------------------------
# setup shared by the timing run and the memory workers


class Setup:
    """Seeded model, frames, pair graph and ~20 % dynamic token masks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = args.device
        torch.manual_seed(args.seed)
        model = CroCoStereo(**PRESETS[CONFIGS[args.config]].constructor)
        self.backbone = CroCoBackbone(model, device=self.device, batch_size=args.batch_size)
        self.model = self.backbone.model
        self.height = args.height or (args.size * 9 // 16) // 16 * 16
        self.width = args.size
        gen = torch.Generator().manual_seed(args.seed + 1)
        images = torch.rand(args.frames, 3, self.height, self.width, generator=gen) * 2 - 1
        self.images = images.to(self.device)
        self.all_pairs = make_pairs(args.graph, args.frames)
        self.pairs = self.all_pairs[: args.pairs] if args.pairs else self.all_pairs
        self.frames_used = sorted({int(i) for i in self.pairs.flatten()})
        self.pixel_masks = moving_box_masks(args.frames, self.height, self.width, DYNAMIC_FRACTION)
        self.token_masks = pixel_to_token_masks(self.pixel_masks, self.backbone.patch_size).to(self.device)
        self.encoded = None

    @torch.inference_mode()
    def encode(self) -> Encoded:
        """The per-frame encoder cache, indexed by frame; only the frames the timed pairs use are
        encoded (the others stay zero), so that a few ViT-L pairs do not pay for ten encodings."""
        if len(self.frames_used) == self.args.frames:
            return self.backbone.encode(self.images)
        part = self.backbone.encode(self.images[self.frames_used])
        tokens = part.tokens.new_zeros(self.args.frames, *part.tokens.shape[1:])
        tokens[self.frames_used] = part.tokens
        return dataclasses.replace(part, tokens=tokens)

    def run(self, variant: str, pairs: Tensor) -> object:
        """One run of a variant over ``pairs`` (returns its outputs, to keep them alive like a caller)."""
        bb, m = self.backbone, self.model
        if variant == "encode":
            return bb.encode(self.images[self.frames_used])
        if variant == "a":
            with torch.inference_mode():
                return [m(self.images[i][None], self.images[j][None]) for i, j in pairs.tolist()]
        if variant == "a_dec":
            return bb.decode(self.encoded, pairs, capture=None, heads=False)
        if variant == "b_dec":
            return bb.decode(self.encoded, pairs, capture=query_mean, heads=False)
        if variant == "b":
            encoded = self.encode()  # the (T, N, D) cache, filled for the frames the timed pairs use
            return bb.decode(encoded, pairs, capture=query_mean, heads=False)
        if variant == "c":
            return bb.decode(
                self.encoded,
                pairs,
                capture=query_mean,
                reweight=Reweight(zero_dynamic_keys, self.token_masks),
                heads=True,
            )
        if variant in ("d1", "d2"):
            out = []
            for i, j in pairs.tolist():
                masks = (self.token_masks[i][None], self.token_masks[j][None]) if variant == "d2" else ()
                res = naive_pair(m, self.images[i][None], self.images[j][None], *masks)
                out.append({k: v.cpu() for k, v in res.items()})  # the reference moves results per pair
            return out
        raise ValueError(variant)


def moving_box_masks(n_frames: int, height: int, width: int, fraction: float) -> Tensor:
    """(T, H, W) bool: a token-aligned box covering ``fraction`` of the tokens, moving across frames."""
    nh, nw = height // 16, width // 16
    bh = max(1, round(nh * fraction**0.5))
    bw = max(1, round(nh * nw * fraction / bh))
    masks = torch.zeros(n_frames, nh, nw, dtype=torch.bool)
    for t in range(n_frames):
        r0 = t % max(1, nh - bh + 1)
        c0 = (t * 2) % max(1, nw - bw + 1)
        masks[t, r0 : r0 + bh, c0 : c0 + bw] = True
    return masks.repeat_interleave(16, 1).repeat_interleave(16, 2)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    out = fn()
    _sync(device)
    elapsed = clock() - start
    del out
    return elapsed


# --------------------------------------------------------------------------------------------------
# peak memory (one fresh process per variant)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_worker(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    setup = Setup(args)
    pairs = setup.pairs[: args.mem_pairs]
    variant = args._worker
    if variant in ("a_dec", "b_dec", "c"):
        setup.encoded = setup.encode()  # cached by pass 1 in the pipeline: part of the baseline
    if args.mem_warmup:
        out = setup.run(variant, pairs[:1])
        del out
    gc.collect()
    cuda = setup.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    elif _reset_peak() and read_status("VmHWM") is not None:
        base = read_status("VmRSS")
        method = "VmHWM after clear_refs"
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        method = "ru_maxrss delta"
    out = setup.run(variant, pairs)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    elif method.startswith("VmHWM"):
        peak = read_status("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del out
    return {"variant": variant, "peak_bytes": peak - base, "method": method, "pairs": len(pairs)}


def measure_memory(args: argparse.Namespace, variant: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *_forward_args(args), "--_worker", variant]
    env = dict(os.environ)
    # glibc: serve blocks ≥ 64 KiB by mmap and give them back on free, so RSS follows live tensors
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _forward_args(args: argparse.Namespace) -> list[str]:
    out = []
    for name in (
        "config",
        "frames",
        "graph",
        "pairs",
        "size",
        "height",
        "device",
        "batch_size",
        "seed",
        "threads",
        "mem_pairs",
        "mem_warmup",
    ):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


# --------------------------------------------------------------------------------------------------
# timing, checks, report


def measure_time(setup: Setup, args: argparse.Namespace) -> dict[str, list[list[float]]]:
    """Seconds per unit (pair, or frame for the encoder): ``times[variant][round][chunk]``.

    The variants are interleaved chunk by chunk (a chunk = one decode batch of pairs), in an order
    that alternates between rounds, so that bursts of load from other processes hit all of them.
    """
    pairs = setup.pairs
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    setup.encoded = setup.encode()
    if args.warmup:
        for variant in ("encode", *TIME_VARIANTS):
            setup.run(variant, pairs[:1])
    times: dict[str, list[list[float]]] = {v: [] for v in ("encode", *TIME_VARIANTS)}
    chunks = [pairs[s : s + args.batch_size] for s in range(0, len(pairs), args.batch_size)]
    for r in range(args.repeat):
        for per_round in times.values():
            per_round.append([])
        elapsed = _timed(lambda: setup.run("encode", pairs), setup.device, clock)
        times["encode"][-1].append(elapsed / len(setup.frames_used))
        for c, chunk in enumerate(chunks):
            order = TIME_VARIANTS if (r + c) % 2 == 0 else tuple(reversed(TIME_VARIANTS))
            for variant in order:
                elapsed = _timed(lambda v=variant, ch=chunk: setup.run(v, ch), setup.device, clock)
                times[variant][-1].append(elapsed / len(chunk))
        line = " ".join(f"{v} {statistics.fmean(t[-1]) * 1000:.1f}" for v, t in times.items())
        print(f"  round {r + 1} ms/unit: {line}", file=sys.stderr)
    return times


def check_agreement(setup: Setup) -> dict[str, float]:
    """(d) and the fast path compute the same numbers: max |Δ| of maps and points on the first pair."""
    pair = setup.pairs[:1]
    i, j = (int(x) for x in pair[0])
    b = setup.backbone.decode(setup.encoded, pair, capture=query_mean, heads=True)
    c = setup.run("c", pair)
    d1 = setup.run("d1", pair)[0]
    d2 = setup.run("d2", pair)[0]
    with torch.inference_mode():
        a1, _ = setup.model(setup.images[i][None], setup.images[j][None])
    n_h, n_w = setup.encoded.grid

    def diff(x: Tensor, y: Tensor) -> float:
        return float((x.float().cpu().reshape(-1) - y.float().cpu().reshape(-1)).abs().max())

    return {
        "pass1_maps_decoder1": diff(b.attention.decoder1[0], d1["maps1"].reshape(n_h, n_w, -1)),
        "pass1_maps_decoder2": diff(b.attention.decoder2[0], d1["maps2"].reshape(n_h, n_w, -1)),
        "vanilla_pts3d_1": diff(a1["pts3d"][0], d1["pts3d_1"]),
        "pass1_pts3d_1": diff(b.predictions.pts3d_1[0], d1["pts3d_1"]),
        "pass2_maps_decoder1": diff(c.attention.decoder1[0], d2["maps1"].reshape(n_h, n_w, -1)),
        "pass2_maps_decoder2": diff(c.attention.decoder2[0], d2["maps2"].reshape(n_h, n_w, -1)),
        "pass2_pts3d_2": diff(c.predictions.pts3d_2[0], d2["pts3d_2"]),
    }


def summarise(setup: Setup, times: dict[str, list[list[float]]], memory: dict[str, dict]) -> dict:
    # best estimate of the uncontended cost: per chunk the fastest round, then the mean over chunks
    best = {k: statistics.fmean(min(col) for col in zip(*v)) for k, v in times.items()}
    round_means = {k: [statistics.fmean(r) for r in v] for k, v in times.items()}
    paired = [b / a for ra, rb in zip(times["a_dec"], times["b_dec"]) for a, b in zip(ra, rb)]
    n_frames, n_pairs = setup.args.frames, len(setup.all_pairs)
    fast_total = n_frames * best["encode"] + n_pairs * (best["b_dec"] + best["c"])
    naive_total = n_pairs * (best["d1"] + best["d2"])
    b_per_pair = (n_frames * best["encode"] + n_pairs * best["b_dec"]) / n_pairs
    mem = {k: v["peak_bytes"] for k, v in memory.items()}
    ratios = {
        "b_dec_over_a_dec_time": best["b_dec"] / best["a_dec"],
        "b_dec_over_a_dec_time_paired_median": statistics.median(paired),
        "a_dec_share_of_a_time": best["a_dec"] / best["a"],
        "b_over_a_time": b_per_pair / best["a"],
        "naive_over_fast_time_both_passes": naive_total / fast_total,
        "d1_over_b_time": best["d1"] / b_per_pair,
        "d2_over_c_time": best["d2"] / best["c"],
    }
    if mem:
        ratios.update(
            b_over_a_memory=mem["b"] / mem["a"],
            b_dec_over_a_dec_memory=mem["b_dec"] / mem["a_dec"],
            d1_over_b_memory=mem["d1"] / mem["b"],
            d2_over_c_memory=mem["d2"] / mem["c"],
        )
    targets = {
        "capture time ≤ 1.03 × decoder of (a)": ratios["b_dec_over_a_dec_time"] <= 1.03,
        "both passes ≥ 3× faster than (d)": ratios["naive_over_fast_time_both_passes"] >= 3.0,
    }
    if mem:
        targets["capture peak memory ≤ 1.05 × (a)"] = ratios["b_over_a_memory"] <= 1.05
        targets["peak memory ≥ 5× below (d), pass 1"] = ratios["d1_over_b_memory"] >= 5.0
        targets["peak memory ≥ 5× below (d), pass 2"] = ratios["d2_over_c_memory"] >= 5.0
    return {
        "best_seconds_per_unit": best,
        "round_mean_seconds_per_unit": round_means,
        "all_seconds_per_unit": times,
        "b_seconds_per_pair_amortised": b_per_pair,
        "full_graph_seconds": {
            "fast_both_passes": fast_total,
            "naive_both_passes": naive_total,
            "frames": n_frames,
            "pairs": n_pairs,
        },
        "peak_memory_bytes": mem,
        "ratios": ratios,
        "targets_met": targets,
    }


def markdown(setup: Setup, summary: dict, memory: dict[str, dict]) -> str:
    best, mem = summary["best_seconds_per_unit"], summary["peak_memory_bytes"]
    rows = [
        ("(a) vanilla forward, heads on", best["a"], mem.get("a")),
        ("(a-dec) decoder of (a): decode, no capture, no heads", best["a_dec"], mem.get("a_dec")),
        ("(b-dec) decode with query_mean capture, no heads", best["b_dec"], mem.get("b_dec")),
        (
            "(b) pass 1 = encode each frame once + (b-dec)",
            summary["b_seconds_per_pair_amortised"],
            mem.get("b"),
        ),
        ("(c) pass 2: zero_dynamic_keys + capture, heads on", best["c"], mem.get("c")),
        ("(d1) naive pass 1 (reference-like)", best["d1"], mem.get("d1")),
        ("(d2) naive pass 2 (reference-like, post-softmax mask)", best["d2"], mem.get("d2")),
        ("encoder, per frame", best["encode"], None),
    ]
    lines = [
        "| variant | time per pair (s, best of rounds) | peak memory over baseline (MiB) |",
        "|---|---:|---:|",
    ]
    for name, t, m in rows:
        lines.append(f"| {name} | {t:.4f} | {'—' if m is None else f'{m / 2**20:.1f}'} |")
    g = summary["full_graph_seconds"]
    lines += [
        "",
        f"Full graph ({g['frames']} frames, {g['pairs']} ordered pairs, both passes): fast "
        f"{g['fast_both_passes']:.2f} s, naive {g['naive_both_passes']:.2f} s.",
        "",
        "| ratio | value | target | met |",
        "|---|---:|---|---|",
    ]
    r, t = summary["ratios"], summary["targets_met"]
    spec = [
        ("(b-dec) / (a-dec) time", "b_dec_over_a_dec_time", "≤ 1.03", "capture time ≤ 1.03 × decoder of (a)"),
        (
            "(b-dec) / (a-dec) time, median of back-to-back pairs",
            "b_dec_over_a_dec_time_paired_median",
            "",
            None,
        ),
        ("(a-dec) / (a) time (decoder share)", "a_dec_share_of_a_time", "", None),
        ("(b) / (a) time (amortised encoder)", "b_over_a_time", "", None),
        (
            "(d1+d2) / (b+c) time, full graph",
            "naive_over_fast_time_both_passes",
            "≥ 3",
            "both passes ≥ 3× faster than (d)",
        ),
        ("(d1) / (b) time", "d1_over_b_time", "", None),
        ("(d2) / (c) time", "d2_over_c_time", "", None),
        ("(b) / (a) peak memory", "b_over_a_memory", "≤ 1.05", "capture peak memory ≤ 1.05 × (a)"),
        ("(b-dec) / (a-dec) peak memory", "b_dec_over_a_dec_memory", "", None),
        ("(d1) / (b) peak memory", "d1_over_b_memory", "≥ 5", "peak memory ≥ 5× below (d), pass 1"),
        ("(d2) / (c) peak memory", "d2_over_c_memory", "≥ 5", "peak memory ≥ 5× below (d), pass 2"),
    ]
    for name, key, target, tkey in spec:
        if key in r:
            met = "" if tkey is None else ("yes" if t[tkey] else "**no**")
            lines.append(f"| {name} | {r[key]:.3f} | {target} | {met} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--graph", default="swinstride-5-noncyclic")
    p.add_argument("--pairs", type=int, default=0, help="time only the first N ordered pairs (0 = all)")
    p.add_argument("--size", type=int, default=512, help="input width")
    p.add_argument("--height", type=int, default=None, help="input height (default: 9/16 of the width)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1, help="pairs per decode call for (a-dec)..(c)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up run of each variant on one pair")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process CPU time, robust on a shared machine with --threads 1",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mem-pairs", type=int, default=1, help="pairs each memory worker runs (peak is per pair)"
    )
    p.add_argument("--mem-warmup", type=int, default=1)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--memory-only", action="store_true", help="measure peak memory only (write it with --json)"
    )
    p.add_argument("--memory-json", type=Path, default=None, help="take the peaks from a --memory-only JSON")
    p.add_argument("--no-check", action="store_true", help="skip the (d)-vs-fast agreement check")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--_worker", choices=MEM_VARIANTS, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _jsonable(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._worker:
        print(json.dumps(memory_worker(args)))
        return
    if args.clock == "cpu" and args.device != "cpu":
        raise SystemExit("--clock cpu measures CPU work; use the wall clock on an accelerator")
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    memory: dict[str, dict] = {}
    if args.memory_json:  # peaks measured by an earlier --memory-only run with the same settings
        earlier = json.loads(args.memory_json.read_text())
        for key in ("config", "frames", "graph", "size", "height", "batch_size", "device"):
            if earlier["args"].get(key) != getattr(args, key):
                raise SystemExit(f"{args.memory_json}: {key} differs from this run")
        memory = earlier["memory"]
    elif not args.no_memory:  # before the timing model exists, so the workers do not compete for RAM
        for variant in MEM_VARIANTS:
            memory[variant] = measure_memory(args, variant)
            print(f"  memory {variant:6s} {memory[variant]['peak_bytes'] / 2**20:10.1f} MiB", file=sys.stderr)
    if args.memory_only:
        print("| variant | peak memory over baseline (MiB) |\n|---|---:|")
        for variant, m in memory.items():
            print(f"| {variant} | {m['peak_bytes'] / 2**20:.1f} |")
        print(f"\nmemory: {next(iter(memory.values()))['method']}, wall {time.perf_counter() - wall:.0f} s")
        if args.json:
            payload = {"args": _jsonable(args), "machine": machine(), "memory": memory}
            args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    setup = Setup(args)
    times = measure_time(setup, args)
    agreement = {} if args.no_check else check_agreement(setup)
    summary = summarise(setup, times, memory)
    wall = time.perf_counter() - wall
    n_tok = (setup.height // 16) * (setup.width // 16)
    dyn = float(setup.token_masks.float().mean())
    header = (
        f"config {args.config} ({CONFIGS[args.config]}), input {setup.width}×{setup.height} ({n_tok} tokens), "
        f"{args.frames} frames, graph {args.graph} ({len(setup.all_pairs)} ordered pairs), timed pairs "
        f"{len(setup.pairs)}, batch size {args.batch_size}, device {args.device}, {args.threads} thread(s), "
        f"{args.clock} clock, "
        f"{args.repeat} round(s), dynamic tokens {dyn:.1%}, memory: "
        f"{next(iter(memory.values()))['method'] if memory else 'not measured'}, wall {wall:.0f} s"
    )
    print(header)
    print()
    print(markdown(setup, summary, memory))
    if agreement:
        print()
        print(
            "max |Δ| naive vs fast (first pair): " + ", ".join(f"{k} {v:.2e}" for k, v in agreement.items())
        )
    if args.json:
        payload = {
            "args": _jsonable(args),
            "machine": machine(),
            "input": [setup.height, setup.width],
            "dynamic_token_fraction": dyn,
            "wall_seconds": wall,
            "memory": memory,
            "agreement": agreement,
            **summary,
        }
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
