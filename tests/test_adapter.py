"""Wrapping foreign CroCo-family modules: their attention is swapped for fused, hookable modules.

The first test builds a "foreign" model by replacing this project's attention modules with naive ones that
follow upstream dust3r's interface and arithmetic. The second runs on the real upstream class when
``EASI3R_UPSTREAM_DUST3R`` points to a dust3r checkout (with its ``croco`` submodule); skipped otherwise.
"""

from __future__ import annotations

import copy
import math
import os
import sys

import pytest
import torch
from torch import nn

from easi3r.attention import Reweight, pixel_to_token_masks
from easi3r.backends.adapter import CroCoBackbone, adopt_attention
from easi3r.backends.croco import Attention, CrossAttention
from easi3r.strategies.capture import query_mean
from easi3r.strategies.reweight import zero_dynamic_keys

from .helpers import relative_error

PARITY_TOL = 1e-4


class NaiveSelfAttention(nn.Module):
    """Upstream-style self-attention: explicit logits and softmax, in-place-free RoPE call."""

    def __init__(self, ours: Attention) -> None:
        super().__init__()
        self.num_heads, self.scale = ours.num_heads, ours.scale
        self.qkv, self.proj, self.rope = ours.qkv, ours.proj, ours.rope

    def forward(self, x, xpos):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).transpose(1, 3).unbind(2)
        q, k = self.rope(q, xpos), self.rope(k, xpos)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class NaiveCrossAttention(nn.Module):
    def __init__(self, ours: CrossAttention) -> None:
        super().__init__()
        self.num_heads, self.scale = ours.num_heads, ours.scale
        self.projq, self.projk, self.projv, self.proj = ours.projq, ours.projk, ours.projv, ours.proj
        self.rope = ours.rope

    def forward(self, query, key, value, qpos, kpos):
        b, nq, c = query.shape
        nk = key.shape[1]
        q = self.projq(query).reshape(b, nq, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
        k = self.projk(key).reshape(b, nk, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
        v = self.projv(value).reshape(b, nk, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
        q, k = self.rope(q, qpos), self.rope(k, kpos)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, nq, c))


def make_foreign(model: nn.Module) -> nn.Module:
    foreign = copy.deepcopy(model)
    for blocks in (foreign.enc_blocks, foreign.dec_blocks, foreign.dec_blocks2):
        for blk in blocks:
            blk.attn = NaiveSelfAttention(blk.attn)
            if hasattr(blk, "cross_attn"):
                blk.cross_attn = NaiveCrossAttention(blk.cross_attn)
    return foreign


def _both_passes(backbone, golden):
    images, pairs = torch.from_numpy(golden["input/img"]), torch.from_numpy(golden["pairs"])
    encoded = backbone.encode(images)
    masks = pixel_to_token_masks(torch.from_numpy(golden["pass2/atten_mask_input"]), 16)
    pass1 = backbone.decode(encoded, pairs, capture=query_mean)
    pass2 = backbone.decode(encoded, pairs, capture=query_mean, reweight=Reweight(zero_dynamic_keys, masks))
    return pass1, pass2


def test_adopt_attention_swaps_foreign_modules_and_keeps_state(golden_model, golden):
    foreign = make_foreign(golden_model)
    keys_before = {k: v.data_ptr() for k, v in foreign.state_dict().items()}
    adopt_attention(foreign)
    assert all(isinstance(b.cross_attn, CrossAttention) for b in foreign.dec_blocks)
    assert all(isinstance(b.attn, Attention) for b in foreign.enc_blocks)
    # same parameter tensors under the same names: a checkpoint still loads into the wrapped model
    assert {k: v.data_ptr() for k, v in foreign.state_dict().items()} == keys_before

    ours = _both_passes(CroCoBackbone(golden_model, batch_size=4), golden)
    theirs = _both_passes(CroCoBackbone(make_foreign(golden_model), batch_size=4), golden)
    for a, b in zip(ours, theirs):
        assert relative_error(a.attention.decoder1, b.attention.decoder1) < 1e-5
        assert relative_error(a.predictions.pts3d_2, b.predictions.pts3d_2) < 1e-5


UPSTREAM = os.environ.get("EASI3R_UPSTREAM_DUST3R")


@pytest.mark.upstream
@pytest.mark.skipif(not UPSTREAM, reason="set EASI3R_UPSTREAM_DUST3R to a dust3r checkout to run")
def test_upstream_dust3r_model_object(golden, golden_info, golden_model):
    """The upstream AsymmetricCroCo3DStereo, wrapped, reproduces the golden reference outputs."""
    sys.path.insert(0, UPSTREAM)
    try:
        from dust3r.model import AsymmetricCroCo3DStereo
    finally:
        sys.path.remove(UPSTREAM)
    kwargs = dict(golden_model.config)
    kwargs.update(patch_embed_cls="PatchEmbedDust3R", landscape_only=False)
    kwargs["depth_mode"] = ("exp", -math.inf, math.inf)
    kwargs.pop("patch_size")
    upstream = AsymmetricCroCo3DStereo(**kwargs)
    upstream.load_state_dict(golden_model.state_dict())
    backbone = CroCoBackbone(upstream, batch_size=3)
    kept = golden_info["pairs_kept_for_pair_predictions"]
    for name, out in zip(("pass1", "pass2"), _both_passes(backbone, golden)):
        assert relative_error(out.attention.decoder1, golden[f"{name}/pred1_cross_atten_maps_k"]) < PARITY_TOL
        assert relative_error(out.attention.decoder2, golden[f"{name}/pred2_cross_atten_maps_k"]) < PARITY_TOL
        assert relative_error(out.predictions.pts3d_1[kept], golden[f"{name}/pred1_pts3d"]) < PARITY_TOL
        assert relative_error(out.predictions.conf_2[kept], golden[f"{name}/pred2_conf"]) < PARITY_TOL


@pytest.mark.upstream
@pytest.mark.skipif(not UPSTREAM, reason="set EASI3R_UPSTREAM_DUST3R to a dust3r checkout to run")
def test_upstream_dpt_heads_match():
    """Our DPT network equals upstream dust3r's on the same random weights (plain forward, both heads)."""
    from easi3r.backends.croco import CroCoStereo

    sys.path.insert(0, UPSTREAM)
    try:
        from dust3r.model import AsymmetricCroCo3DStereo
    finally:
        sys.path.remove(UPSTREAM)
    kwargs = dict(
        pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", img_size=(512, 512), head_type="dpt",
        output_mode="pts3d", depth_mode=("exp", -math.inf, math.inf), conf_mode=("exp", 1, math.inf),
        enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=48, dec_depth=10, dec_num_heads=3,
    )  # fmt: skip
    ours = CroCoStereo(**kwargs).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # biases and norms away from their init values
        for head in (ours.downstream_head1, ours.downstream_head2):
            head.dpt.head[4].weight.mul_(1e-4)  # outputs of order 1: exp(depth) does not amplify rounding
    upstream = AsymmetricCroCo3DStereo(**kwargs, landscape_only=False).eval()
    upstream.load_state_dict(ours.state_dict())
    images = torch.rand(2, 3, 144, 224) * 2 - 1
    shape = torch.tensor([[144, 224]] * 2)
    with torch.no_grad():
        theirs = upstream(
            dict(img=images[:1], true_shape=shape[:1], idx=0, instance="0"),
            dict(img=images[1:], true_shape=shape[1:], idx=1, instance="1"),
        )
    backbone = CroCoBackbone(ours, batch_size=1)
    pred = backbone.decode(backbone.encode(images), torch.tensor([[0, 1]])).predictions
    assert relative_error(pred.pts3d_1, theirs[0]["pts3d"]) < 1e-5
    assert relative_error(pred.conf_1, theirs[0]["conf"]) < 1e-5
    assert relative_error(pred.pts3d_2, theirs[1]["pts3d_in_other_view"]) < 1e-5
    assert relative_error(pred.conf_2, theirs[1]["conf"]) < 1e-5
