"""The VGGT network: key compatibility with the official VGGT-1B, parity with the official code through the
committed golden outputs (tests/vggt_golden.py), the global-attention hook, and the pose utilities."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from easi3r.backends.vggt.network import VGGTNetwork
from easi3r.backends.vggt.pose import (
    pose_encoding_to_extrinsics_intrinsics,
    quaternion_to_matrix,
    unproject_depth,
)
from easi3r.backends.vggt.presets import PRESETS

from . import vggt_golden as golden
from .helpers import relative_error

KEYS_FILE = golden.DATA / "vggt-1b-keys.json"


@pytest.fixture(scope="module")
def tiny() -> VGGTNetwork:
    return golden.tiny_network()


def test_vggt_1b_has_the_official_keys_and_shapes():
    """Every official key and shape but the tracking head's, in the official order."""
    official = json.loads(KEYS_FILE.read_text())["keys"]
    expected = {key: shape for key, shape in official.items() if not key.startswith("track_head.")}
    with torch.device("meta"):
        model = VGGTNetwork(PRESETS["vggt_1b"].config)
    actual = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(actual.items()) == list(expected.items())
    assert sum(math.prod(shape) for shape in actual.values()) == 1_190_596_120


def test_tiny_network_reproduces_the_official_outputs(tiny):
    """Aggregator layers, pose encoding, depth, points and confidences as the official code computed them
    for the same weights and images (relative error; measured ~2e-7)."""
    expected = load_file(golden.NETWORK_FILE)
    actual = golden.network_outputs(tiny, golden.golden_images())
    assert actual.keys() == expected.keys()
    for key, reference in expected.items():
        assert actual[key].shape == reference.shape, key
        assert relative_error(actual[key], reference) < golden.TOLERANCE, key


def test_forward_returns_the_official_dictionary(tiny):
    """(S, 3, H, W) gets a batch dimension; a batch is windows run one by one."""
    images = torch.rand(2, 3, 3, 42, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = tiny(images)
        single = tiny(images[1])
    assert set(batch) == {
        "pose_enc",
        "pose_enc_list",
        "depth",
        "depth_conf",
        "world_points",
        "world_points_conf",
    }
    assert batch["pose_enc"].shape == (2, 3, 9)
    assert batch["depth"].shape == (2, 3, 42, 56, 1)
    assert batch["depth_conf"].shape == (2, 3, 42, 56)
    assert batch["world_points"].shape == (2, 3, 42, 56, 3)
    assert batch["world_points_conf"].shape == (2, 3, 42, 56)
    assert len(batch["pose_enc_list"]) == tiny.config.camera_iterations
    assert torch.equal(batch["pose_enc_list"][-1], batch["pose_enc"])
    for key in ("pose_enc", "depth", "world_points_conf"):
        torch.testing.assert_close(single[key][0], batch[key][1])
    assert (batch["depth"] > 0).all() and (batch["depth_conf"] > 1).all()


def test_predict_returns_only_the_heads_asked_for(tiny):
    images = torch.rand(2, 3, 28, 42)
    with torch.no_grad():
        tokens, start = tiny.aggregate(tiny.embed(images), (28, 42))
        out = tiny.predict(tokens, start, tuple(images.shape[-2:]), depth=False, points=False)
    assert list(out) == ["pose_enc"]
    assert start == 5
    assert [i for i, t in enumerate(tokens) if t is not None] == list(tiny.head_layers)


def test_embedding_is_per_frame(tiny):
    images = torch.rand(3, 3, 28, 42)
    with torch.no_grad():
        together = tiny.embed(images)
        alone = tiny.embed(images[2:])
    assert together.shape == (3, 6, tiny.config.embed_dim)
    torch.testing.assert_close(together[2:], alone)


def test_image_size_must_be_a_multiple_of_the_patch(tiny):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tiny.embed(torch.rand(2, 3, 30, 42))


def test_attention_hook_sees_every_global_layer(tiny):
    """Called once per global block (never by frame blocks) with q, k, v of the whole window."""
    frames, height, width = 3, 28, 42
    images = torch.rand(frames, 3, height, width)
    calls = []

    def hook(layer, q, k, v, scale):
        calls.append((layer, q.shape, k.shape, v.shape, scale))
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    with torch.no_grad():
        tokens = tiny.embed(images)
        tiny.aggregate(tokens, (height, width), attention_hook=hook)
    heads, head_dim = tiny.config.num_heads, tiny.config.embed_dim // tiny.config.num_heads
    window = frames * (tiny.patch_start_idx + 2 * 3)
    shape = (1, heads, window, head_dim)
    assert calls == [(i, shape, shape, shape, head_dim**-0.5) for i in range(tiny.config.depth)]


def test_attention_hook_sees_normalised_queries_and_keys(tiny):
    """q and k arrive after QK-norm: at position (0, 0), where RoPE is the identity (the camera and register
    tokens), each head's channels have mean 0 and variance 1 (the random build's norms have unit weights)."""
    seen = []

    def hook(layer, q, k, v, scale):
        seen.extend((q, k))
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    with torch.no_grad():
        tiny.aggregate(tiny.embed(torch.rand(2, 3, 28, 28)), (28, 28), attention_hook=hook)
    for x in seen:
        special = x[0, :, : tiny.patch_start_idx]
        torch.testing.assert_close(special.mean(-1), torch.zeros_like(special.mean(-1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            special.var(-1, unbiased=False), torch.ones_like(special.mean(-1)), atol=1e-3, rtol=0
        )


def test_sdpa_hook_reproduces_the_plain_forward_exactly(tiny):
    images = torch.rand(3, 3, 28, 42)
    keep = range(tiny.config.depth)

    def hook(layer, q, k, v, scale):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    with torch.no_grad():
        tokens = tiny.embed(images)
        plain, start = tiny.aggregate(tokens, (28, 42), keep=keep)
        hooked, _ = tiny.aggregate(tokens, (28, 42), attention_hook=hook, keep=keep)
        assert all(torch.equal(a, b) for a, b in zip(plain, hooked))
        out_plain = tiny.predict(plain, start, tuple(images.shape[-2:]))
        out_hooked = tiny.predict(hooked, start, tuple(images.shape[-2:]))
    assert all(torch.equal(out_plain[key], out_hooked[key]) for key in out_plain)


def test_hook_output_changes_the_result(tiny):
    """What the hook returns is used: zeroing one layer's attention changes the later layers."""
    images = torch.rand(2, 3, 28, 28)

    def hook(layer, q, k, v, scale):
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return torch.zeros_like(out) if layer == 1 else out

    with torch.no_grad():
        tokens = tiny.embed(images)
        plain, _ = tiny.aggregate(tokens, (28, 28), keep=(0, 3))
        hooked, _ = tiny.aggregate(tokens, (28, 28), attention_hook=hook, keep=(0, 3))
    assert torch.equal(plain[0], hooked[0])
    assert not torch.allclose(plain[3], hooked[3])


def test_first_frame_tokens_differ_from_the_others(tiny):
    """The reference frame gets its own camera and register tokens: moving a frame to the front changes
    its outputs, while the other frames' order does not matter beyond a permutation."""
    images = torch.rand(3, 3, 28, 28)
    with torch.no_grad():
        tokens = tiny.embed(images)
        a, _ = tiny.aggregate(tokens, (28, 28), keep=(3,))
        b, _ = tiny.aggregate(tokens[[0, 2, 1]], (28, 28), keep=(3,))
        c, _ = tiny.aggregate(tokens[[1, 0, 2]], (28, 28), keep=(3,))
    torch.testing.assert_close(a[3][0, 1], b[3][0, 2])
    assert not torch.allclose(a[3][0, 0], c[3][0, 1], atol=1e-3)


def test_quaternion_to_matrix_is_a_rotation():
    quaternion = torch.randn(5, 4, dtype=torch.float64)
    rotation = quaternion_to_matrix(quaternion)
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(rotation @ rotation.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(5, dtype=torch.float64))
    # 90 degrees about z, scalar last
    half = math.sqrt(0.5)
    quarter_turn = quaternion_to_matrix(torch.tensor([0.0, 0.0, half, half], dtype=torch.float64))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(quarter_turn, expected)


def test_pose_encoding_gives_opencv_cameras_in_pixels():
    encoding = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 1.0, 2 * math.atan(0.5), 2 * math.atan(1.0)]])
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding.double(), (40, 60))
    assert extrinsics.dtype == intrinsics.dtype == torch.float64
    torch.testing.assert_close(extrinsics[0, :, :3], torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(extrinsics[0, :, 3], encoding[0, :3].double())
    # fov_h = 2 atan(0.5): fy = (H / 2) / 0.5 = 40; fov_w = 2 atan(1): fx = W / 2 = 30
    expected = torch.tensor([[30.0, 0.0, 30.0], [0.0, 40.0, 20.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(intrinsics[0], expected)


def test_unprojected_points_project_back_to_their_pixels():
    generator = torch.Generator().manual_seed(0)
    encoding = torch.randn(2, 9, generator=generator, dtype=torch.float64)
    encoding[:, 7:] = 1.0
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (6, 8))
    depth = torch.rand(2, 6, 8, 1, generator=generator, dtype=torch.float64) + 1
    points = unproject_depth(depth, extrinsics, intrinsics)
    assert points.shape == (2, 6, 8, 3) and points.dtype == torch.float64
    camera = points @ extrinsics[:, None, :, :3].transpose(-1, -2) + extrinsics[:, None, None, :, 3]
    pixels = camera @ intrinsics[:, None].transpose(-1, -2)
    torch.testing.assert_close(pixels[..., 2], depth[..., 0])
    v, u = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    torch.testing.assert_close(pixels[..., 0] / pixels[..., 2], u.double().expand(2, 6, 8))
    torch.testing.assert_close(pixels[..., 1] / pixels[..., 2], v.double().expand(2, 6, 8))


def test_heads_need_their_layers(tiny):
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        tokens, start = tiny.aggregate(tiny.embed(images), (28, 28), keep=(3,))
        assert list(tiny.predict(tokens, start, tuple(images.shape[-2:]), depth=False, points=False)) == [
            "pose_enc"
        ]
        with pytest.raises(
            ValueError, match=r"aggregator layer 0 was not kept; the heads read layers \(0, 1, 2, 3\)"
        ):
            tiny.predict(tokens, start, tuple(images.shape[-2:]))
