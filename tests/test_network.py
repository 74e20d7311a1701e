"""The CroCo-family network: golden parity of both passes, the two identities, batching, encoder reuse."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from easi3r.attention import AttentionHook, Reweight
from easi3r.backends.adapter import CroCoBackbone
from easi3r.backends.croco import CroCoStereo
from easi3r.strategies.capture import full_logits, query_mean
from easi3r.strategies.reweight import post_softmax_oracle, zero_dynamic_keys

from .helpers import relative_error

PARITY_TOL = 1e-4  # issue target; measured ≈ 2e-6 (float32 rounding)


def token_masks(pixel_masks: torch.Tensor, patch: int = 16) -> torch.Tensor:
    return F.max_pool2d(pixel_masks.float()[:, None], patch).flatten(1) > 0.5


@pytest.fixture(scope="module")
def golden_inputs(golden):
    return torch.from_numpy(golden["input/img"]), torch.from_numpy(golden["pairs"])


@pytest.mark.parametrize("batch_size", [1, 5, 12])
def test_golden_parity_both_passes(golden, golden_info, golden_model, golden_inputs, batch_size):
    images, pairs = golden_inputs
    kept = golden_info["pairs_kept_for_pair_predictions"]
    backbone = CroCoBackbone(golden_model, device="cpu", batch_size=batch_size)
    encoded = backbone.encode(images)
    assert relative_error(encoded.features(), golden["pass1/stacked_feat"]) < PARITY_TOL

    pass_masks = {
        "pass1": None,
        "pass2": token_masks(torch.from_numpy(golden["pass2/atten_mask_input"])),
    }
    for name, masks in pass_masks.items():
        reweight = None if masks is None else Reweight(zero_dynamic_keys, masks)
        out = backbone.decode(encoded, pairs, capture=query_mean, reweight=reweight)
        pred = out.predictions
        checks = {
            "pred1_cross_atten_maps_k": out.attention.decoder1,
            "pred2_cross_atten_maps_k": out.attention.decoder2,
            "pred1_pts3d": pred.pts3d_1[kept],
            "pred2_pts3d_in_other_view": pred.pts3d_2[kept],
            "pred1_conf": pred.conf_1[kept],
            "pred2_conf": pred.conf_2[kept],
        }
        for key, value in checks.items():
            err = relative_error(value, golden[f"{name}/{key}"])
            assert err < PARITY_TOL, f"{name}/{key}: relative error {err:.2e}"


def test_pass2_changes_later_layers_only(golden_model, golden_inputs, golden):
    """Re-weighting leaves the layer-0 maps of both decoders as in pass 1 and changes later layers."""
    images, pairs = golden_inputs
    backbone = CroCoBackbone(golden_model, batch_size=12)
    encoded = backbone.encode(images)
    masks = token_masks(torch.from_numpy(golden["pass2/atten_mask_input"]))
    p1 = backbone.decode(encoded, pairs, capture=query_mean, heads=False).attention
    p2 = backbone.decode(
        encoded, pairs, capture=query_mean, reweight=Reweight(zero_dynamic_keys, masks), heads=False
    ).attention
    heads = backbone.decoder_heads
    for m1, m2 in ((p1.decoder1, p2.decoder1), (p1.decoder2, p2.decoder2)):
        assert torch.equal(m1[..., :heads], m2[..., :heads])
        assert not torch.allclose(m1[..., heads:], m2[..., heads:])


def test_vanilla_forward_equals_backbone(golden_model, golden_inputs):
    images, pairs = golden_inputs
    with torch.inference_mode():
        res1, res2 = golden_model(images[pairs[:, 0]], images[pairs[:, 1]])
    backbone = CroCoBackbone(golden_model, batch_size=4)
    pred = backbone.decode(backbone.encode(images), pairs).predictions
    assert relative_error(pred.pts3d_1, res1["pts3d"]) < 1e-5
    assert relative_error(pred.pts3d_2, res2["pts3d_in_other_view"]) < 1e-5
    assert relative_error(pred.conf_2, res2["conf"]) < 1e-5


def test_encoder_runs_once_per_frame(golden_model, golden_inputs):
    images, pairs = golden_inputs
    calls = []
    handle = golden_model.patch_embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        backbone = CroCoBackbone(golden_model, batch_size=2)
        encoded = backbone.encode(images)
        backbone.decode(encoded, pairs, capture=query_mean)
        backbone.decode(encoded, pairs, reweight=Reweight(zero_dynamic_keys, torch.zeros(5, 144, dtype=bool)))
    finally:
        handle.remove()
    assert sum(calls) == len(images)


# --- the two identities, in float64 against the full-attention oracles -----------------------------------


def _random_qkv(b=3, heads=4, nq=37, nk=29, d=16):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, heads, n, d, generator=g, dtype=torch.float64) for n in (nq, nk, nk))
    return q, k, v


def test_capture_identity_float64():
    q, k, _ = _random_qkv()
    err = (query_mean(1, 0, q, k, 0.25) - full_logits(1, 0, q, k, 0.25)).abs().max()
    assert err <= 1e-10


def test_value_zeroing_identity_float64():
    q, k, v = _random_qkv()
    g = torch.Generator().manual_seed(2)
    qdyn = torch.rand(q.shape[0], q.shape[2], generator=g) > 0.6
    kdyn = torch.rand(k.shape[0], k.shape[2], generator=g) > 0.5
    err = (
        (zero_dynamic_keys(q, k, v, 0.25, qdyn, kdyn) - post_softmax_oracle(q, k, v, 0.25, qdyn, kdyn))
        .abs()
        .max()
    )
    assert err <= 1e-10
    # no dynamic key: plain attention; all queries dynamic: plain attention
    none = torch.zeros_like(kdyn)
    assert torch.allclose(
        zero_dynamic_keys(q, k, v, 0.25, qdyn, none), post_softmax_oracle(q, k, v, 0.25, qdyn, none)
    )


@pytest.fixture(scope="module")
def model64(golden_model):
    return copy.deepcopy(golden_model).double()


def test_whole_network_identities_float64(model64, golden_inputs, golden):
    """Capture and re-weighting through the real network match the oracles to 1e-10 in float64."""
    images, pairs = golden_inputs
    backbone = CroCoBackbone(model64, batch_size=6)
    encoded = backbone.encode(images.double())
    masks = token_masks(torch.from_numpy(golden["pass2/atten_mask_input"]))
    fast = backbone.decode(encoded, pairs, capture=query_mean, reweight=Reweight(zero_dynamic_keys, masks))
    slow = backbone.decode(encoded, pairs, capture=full_logits, reweight=Reweight(post_softmax_oracle, masks))
    for a, b in (
        (fast.attention.decoder1, slow.attention.decoder1),
        (fast.attention.decoder2, slow.attention.decoder2),
        (fast.predictions.pts3d_1, slow.predictions.pts3d_1),
        (fast.predictions.pts3d_2, slow.predictions.pts3d_2),
    ):
        assert (a.double() - b.double()).abs().max() <= 1e-10


def test_reweight_layer_and_decoder_selection(golden_model, golden_inputs, golden):
    images, pairs = golden_inputs
    backbone = CroCoBackbone(golden_model, batch_size=12)
    encoded = backbone.encode(images)
    masks = token_masks(torch.from_numpy(golden["pass2/atten_mask_input"]))
    plain = backbone.decode(encoded, pairs, heads=True).predictions
    no_layers = backbone.decode(
        encoded, pairs, reweight=Reweight(zero_dynamic_keys, masks, layers=())
    ).predictions
    assert torch.equal(plain.pts3d_1, no_layers.pts3d_1)
    dec2 = backbone.decode(
        encoded, pairs, reweight=Reweight(zero_dynamic_keys, masks, decoders=(2,))
    ).predictions
    assert not torch.allclose(plain.pts3d_2, dec2.pts3d_2)


def test_hook_routes_masks_by_decoder():
    rw = Reweight(zero_dynamic_keys, torch.tensor([[True], [False]]), decoders=(1, 2), layers=(1,)).for_pairs(
        torch.tensor([[0, 1]]), "cpu"
    )
    assert rw.masks(1)[0].item() and not rw.masks(2)[0].item()
    assert rw.applies(2, 1) and not rw.applies(1, 0)
    hook = AttentionHook(decoder=1, layer=0)
    q, k, v = _random_qkv(b=1, nq=4, nk=4)
    assert torch.allclose(hook(q, k, v, 0.5), torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1) @ v)


def test_dpt_head_runs_on_non_square_odd_grid():
    """DPT on a 9×16 token grid (odd rows): output at full resolution, finite."""
    model = CroCoStereo(
        enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=24, dec_depth=10, dec_num_heads=2,
        head_type="dpt",
    )  # fmt: skip
    backbone = CroCoBackbone(model, batch_size=2)
    images = torch.rand(3, 3, 144, 256) * 2 - 1
    out = backbone.decode(backbone.encode(images), torch.tensor([[0, 1], [1, 2], [2, 0]]), capture=query_mean)
    assert out.predictions.pts3d_1.shape == (3, 144, 256, 3)
    assert out.attention.decoder1.shape == (3, 9, 16, 20)
    assert torch.isfinite(out.predictions.conf_2).all()
    with torch.inference_mode():
        res1, _ = model(images[:1], images[1:2])
    assert relative_error(out.predictions.pts3d_1[:1], res1["pts3d"]) < 1e-5


@pytest.mark.parametrize("grid", [(9, 16), (4, 5), (18, 32)])
def test_dpt_head_row_tiles_equal_the_plain_head(grid):
    """The memory-saving tiled head computes what the head's layers compute in one go."""
    from easi3r.backends.heads import DPTHead

    head = DPTHead((32, 24, 24, 24), 10, 16, ("exp", -float("inf"), float("inf")), ("exp", 1, float("inf")))
    path = torch.randn(2, 256, 2 * grid[0], 2 * grid[1])
    with torch.no_grad():
        assert relative_error(head.dpt._head_in_row_tiles(path, tile_rows=7), head.dpt.head(path)) < 1e-6
