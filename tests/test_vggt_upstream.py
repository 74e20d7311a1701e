"""easi3r's VGGT against the official code (facebookresearch/vggt), on the same seeded random weights.

Runs when ``EASI3R_VGGT_UPSTREAM`` is the folder that holds the official ``vggt`` package (the one to put
on ``sys.path``); skipped otherwise. The official package needs ``huggingface_hub`` only for its model
class and ``torchvision`` only for ``ToTensor``: neither is needed here (the modules are assembled
directly, and ``ToTensor`` is stood in for when torchvision is missing). The official 1B network is
built on the meta device and takes our tensors, so a parity run at full size costs one copy of the
weights.

``EASI3R_VGGT_UPSTREAM=... python tests/test_vggt_upstream.py`` rewrites tests/data/golden-vggt/ from
the official code (see tests/vggt_golden.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from easi3r.backends.vggt.checkpoint import load_vggt
from easi3r.backends.vggt.pose import pose_encoding_to_extrinsics_intrinsics, unproject_depth
from easi3r.backends.vggt.presets import PRESETS, VGGTConfig
from easi3r.frames import load_frames

try:
    from . import vggt_golden as golden
    from .helpers import relative_error
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).parent))
    import vggt_golden as golden  # type: ignore[no-redef]
    from helpers import relative_error  # type: ignore[no-redef]

UPSTREAM = os.environ.get("EASI3R_VGGT_UPSTREAM")

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.skipif(
        not UPSTREAM, reason="set EASI3R_VGGT_UPSTREAM to the folder holding the official vggt package"
    ),
]


def _upstream() -> types.SimpleNamespace:
    """The official modules this file uses, imported from ``EASI3R_VGGT_UPSTREAM``."""
    if UPSTREAM not in sys.path:
        sys.path.insert(0, UPSTREAM)
    import vggt.layers.vision_transformer as vision_transformer
    from vggt.heads.camera_head import CameraHead
    from vggt.heads.dpt_head import DPTHead
    from vggt.layers import MemEffAttention, NestedTensorBlock
    from vggt.models.aggregator import Aggregator
    from vggt.utils.geometry import unproject_depth_map_to_point_map

    with _torchvision_or_stand_in():
        from vggt.utils.load_fn import load_and_preprocess_images
    from vggt.utils.pose_enc import pose_encoding_to_extri_intri

    return types.SimpleNamespace(
        vision_transformer=vision_transformer, CameraHead=CameraHead, DPTHead=DPTHead,
        MemEffAttention=MemEffAttention, NestedTensorBlock=NestedTensorBlock, Aggregator=Aggregator,
        unproject_depth_map_to_point_map=unproject_depth_map_to_point_map,
        load_and_preprocess_images=load_and_preprocess_images,
        pose_encoding_to_extri_intri=pose_encoding_to_extri_intri,
    )  # fmt: skip


@contextlib.contextmanager
def _torchvision_or_stand_in() -> Iterator[None]:
    """torchvision if installed; otherwise, while the official loader is imported, a stand-in that
    holds only ``transforms.ToTensor`` as torchvision defines it for 8-bit PIL images (removed again, so
    that other tests still see torchvision missing)."""
    try:
        import torchvision.transforms  # noqa: F401
    except ImportError:
        pass
    else:
        yield
        return

    class ToTensor:
        def __call__(self, picture):
            values = torch.from_numpy(np.array(picture, np.uint8, copy=True))
            return values.reshape(picture.size[1], picture.size[0], -1).permute(2, 0, 1).float().div(255)

    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor = ToTensor
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    stand_in = {"torchvision": package, "torchvision.transforms": transforms}
    sys.modules.update(stand_in)
    try:
        yield
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)


def build_upstream(config: VGGTConfig, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The official aggregator and heads at ``config``'s sizes, holding ``state_dict``'s tensors."""
    up = _upstream()
    linspace = torch.linspace  # DINOv2's drop-path schedule calls .item(), which the meta device refuses
    with (
        torch.device("meta"),
        _patched(up.vision_transformer.torch, "linspace", partial(linspace, device="cpu")),
    ):
        model = nn.Module()
        model.aggregator = up.Aggregator(
            img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
            num_register_tokens=config.num_register_tokens, patch_embed="conv", qk_norm=config.qk_norm,
            rope_freq=config.rope_freq, init_values=config.init_values,
        )  # fmt: skip
        # what the official __build_patch_embed__ builds for "dinov2_vitl14_reg", at this width and depth
        model.aggregator.patch_embed = up.vision_transformer.DinoVisionTransformer(
            img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.dino_depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
            block_fn=partial(up.NestedTensorBlock, attn_class=up.MemEffAttention),
            num_register_tokens=config.num_register_tokens, interpolate_antialias=True,
            interpolate_offset=0.0, block_chunks=0, init_values=1.0,
        )  # fmt: skip
        width = 2 * config.embed_dim
        model.camera_head = up.CameraHead(
            dim_in=width, trunk_depth=config.camera_trunk_depth, num_heads=config.camera_num_heads,
            mlp_ratio=config.mlp_ratio, init_values=config.init_values,
        )  # fmt: skip
        dense = dict(
            patch_size=config.patch_size, features=config.dpt_features,
            out_channels=list(config.dpt_out_channels), intermediate_layer_idx=list(config.dpt_layers),
        )  # fmt: skip
        model.point_head = up.DPTHead(dim_in=width, output_dim=4, activation="inv_log", **dense)
        model.depth_head = up.DPTHead(dim_in=width, output_dim=2, activation="exp", **dense)
    model.load_state_dict(state_dict, strict=True, assign=True)
    for name, value in (("_resnet_mean", (0.485, 0.456, 0.406)), ("_resnet_std", (0.229, 0.224, 0.225))):
        setattr(model.aggregator, name, torch.tensor(value).view(1, 1, 3, 1, 1))  # left on meta by assign
    return model.eval()


class _patched:
    def __init__(self, owner: object, name: str, value: object) -> None:
        self.owner, self.name, self.value = owner, name, value

    def __enter__(self) -> None:
        self.saved = getattr(self.owner, self.name)
        setattr(self.owner, self.name, self.value)

    def __exit__(self, *exc: object) -> None:
        setattr(self.owner, self.name, self.saved)


def upstream_outputs(
    model: nn.Module, images: torch.Tensor, layers: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """What the official VGGT.forward computes, plus aggregator ``layers``, for one window."""
    batch = images[None]
    with torch.no_grad():
        tokens, start = model.aggregator(batch)
        out = {f"aggregator.{i}": tokens[i] for i in layers}
        iterations = model.camera_head(tokens)
        out["pose_enc"] = iterations[-1]
        out["depth"], out["depth_conf"] = model.depth_head(tokens, images=batch, patch_start_idx=start)
        out["world_points"], out["world_points_conf"] = model.point_head(
            tokens, images=batch, patch_start_idx=start
        )
    return out


def _compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], tolerance: float) -> None:
    assert ours.keys() == theirs.keys()
    for key, reference in theirs.items():
        assert ours[key].shape == reference.shape, key
        error = relative_error(ours[key], reference)
        assert error < tolerance, f"{key}: relative error {error:.2e}"


@pytest.mark.parametrize(
    ("frames", "height", "width"), [(golden.FRAMES, golden.HEIGHT, golden.WIDTH), (10, 224, 224)]
)
def test_tiny_network_matches_upstream(frames, height, width):
    """Tokens, cameras, depth, points and confidences; 10 frames also cover the heads' frame chunks and a
    grid equal to the position table's (no resampling)."""
    ours = golden.tiny_network()
    images = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(3))
    layers = tuple(range(ours.config.depth))
    expected = upstream_outputs(build_upstream(ours.config, ours.state_dict()), images, layers)
    with torch.no_grad():
        tokens, start = ours.aggregate(ours.embed(images), (height, width), keep=layers)
        actual = {f"aggregator.{i}": tokens[i] for i in layers} | ours.predict(
            tokens, start, tuple(images.shape[-2:])
        )
    _compare(actual, expected, golden.TOLERANCE)


def test_forward_matches_upstream_forward():
    """``forward`` on a batch of two sequences returns the official dictionary (minus tracks and images)."""
    _upstream()
    pytest.importorskip("einops")  # the official model module imports its tracking head, which needs it
    pytest.importorskip("huggingface_hub")
    from vggt.models.vggt import VGGT

    ours = golden.tiny_network()
    model = build_upstream(ours.config, ours.state_dict())
    official = VGGT.__new__(VGGT)
    nn.Module.__init__(official)
    for name, module in model.named_children():
        setattr(official, name, module)
    official.track_head = None
    images = torch.rand(2, 3, 3, 42, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = official.eval()(images)
        mine = ours(images)
    theirs.pop("images")
    assert mine.keys() == theirs.keys()
    for step, (a, b) in enumerate(zip(mine.pop("pose_enc_list"), theirs.pop("pose_enc_list"))):
        assert relative_error(a, b) < golden.TOLERANCE, f"camera iteration {step}"
    _compare(mine, theirs, golden.TOLERANCE)


def test_golden_files_hold_upstream_outputs(tmp_path):
    """The committed golden files are what the official code computes today."""
    stored = load_file(golden.NETWORK_FILE)
    ours = golden.tiny_network()
    expected = upstream_outputs(
        build_upstream(ours.config, ours.state_dict()), golden.golden_images(), golden.LAYERS
    )
    _compare(stored, expected, 1e-6)
    for name, value in _preprocess_digests(tmp_path).items():
        assert torch.equal(load_file(golden.PREPROCESS_FILE)[name], value), name


def _preprocess_digests(folder: Path) -> dict[str, torch.Tensor]:
    """Thumbnails of the official preprocessing, and the 8-bit SHA-256 of the whole image as bytes."""
    up = _upstream()
    out = {}
    for case in golden.PREPROCESS_CASES:
        for mode in golden.PREPROCESS_MODES:
            pixels = up.load_and_preprocess_images(
                [str(golden.preprocess_image_file(case, folder))], mode=mode
            )[0]
            digest, thumbnail = golden.pixel_digest(pixels)
            out[f"{case}/{mode}/thumbnail"] = thumbnail
            out[f"{case}/{mode}/sha256"] = torch.frombuffer(
                bytearray(bytes.fromhex(digest)), dtype=torch.uint8
            )
    return out


@pytest.mark.parametrize("mode", golden.PREPROCESS_MODES)
@pytest.mark.parametrize("case", golden.PREPROCESS_CASES)
def test_frames_match_upstream_preprocessing(tmp_path, case, mode):
    """frames.mode vggt_crop / vggt_pad gives the official pixels, mapped to [-1, 1]."""
    path = golden.preprocess_image_file(case, tmp_path)
    theirs = _upstream().load_and_preprocess_images([str(path)], mode=mode)[0]
    ours = load_frames([path, path], size=518, mode=f"vggt_{mode}").images[0]
    assert ours.shape == theirs.shape
    assert float((ours - (theirs * 2 - 1)).abs().max()) <= 1e-6


def test_pose_utilities_match_upstream():
    """Cameras from the encoding and world points from depth, float32 and float64."""
    up = _upstream()
    generator = torch.Generator().manual_seed(5)
    encoding = torch.randn(2, 3, 9, generator=generator, dtype=torch.float64)
    encoding[..., 7:] = encoding[..., 7:].abs() + 0.5  # fields of view in radians
    depth = torch.rand(3, 20, 30, 1, generator=generator, dtype=torch.float64) + 0.5
    for dtype in (torch.float32, torch.float64):
        extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding.to(dtype), (20, 30))
        ref_extrinsics, ref_intrinsics = up.pose_encoding_to_extri_intri(encoding.to(dtype), (20, 30))
        assert extrinsics.dtype == dtype
        torch.testing.assert_close(extrinsics, ref_extrinsics, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(intrinsics, ref_intrinsics.to(dtype), rtol=1e-6, atol=1e-6)
        points = unproject_depth(depth.to(dtype), extrinsics[0], intrinsics[0])
        ref_points = up.unproject_depth_map_to_point_map(depth.to(dtype), extrinsics[0], intrinsics[0])
        # the official code rounds the camera coordinates to float32 whatever the input
        assert relative_error(points, torch.from_numpy(ref_points)) < 1e-6


def test_1b_key_list_matches_upstream():
    """tests/data/vggt-1b-keys.json is the official VGGT()'s state dict (the tracking head needs einops)."""
    import json

    pytest.importorskip("einops")
    up = _upstream()
    from vggt.models.vggt import VGGT

    linspace = torch.linspace
    with (
        torch.device("meta"),
        _patched(up.vision_transformer.torch, "linspace", partial(linspace, device="cpu")),
    ):
        keys = {key: list(value.shape) for key, value in VGGT().state_dict().items()}
    assert keys == json.loads((golden.DATA / "vggt-1b-keys.json").read_text())["keys"]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EASI3R_VGGT_1B"), reason="set EASI3R_VGGT_1B=1: 2 × 5 GB, minutes on CPU"
)
def test_1b_network_matches_upstream():
    """The full VGGT-1B configuration, 2 frames of 294 x 518, on seeded random weights. Measured: relative
    errors 5e-8 to 1.4e-7 for the tokens, 7.6e-7 for the pose encoding, ≤ 4.7e-7 for depth, points and
    confidences; about 3 minutes and 6 GB on 2 CPU threads."""
    ours = load_vggt(None, "vggt_1b", seed=0)
    images = torch.rand(2, 3, 294, 518, generator=torch.Generator().manual_seed(1))
    layers = (0, 4, 11, 17, 23)
    with torch.no_grad():
        tokens, start = ours.aggregate(ours.embed(images), (294, 518), keep=layers)
        actual = {f"aggregator.{i}": tokens[i] for i in layers} | ours.predict(
            tokens, start, tuple(images.shape[-2:])
        )
    del tokens
    state = ours.state_dict()
    del ours  # the official network takes the same tensors: one copy of the weights in memory
    expected = upstream_outputs(build_upstream(PRESETS["vggt_1b"].config, state), images, layers)
    _compare(actual, expected, golden.TOLERANCE)


def write_golden() -> None:
    """Rewrite tests/data/golden-vggt/ from the official code."""
    golden.GOLDEN.mkdir(parents=True, exist_ok=True)
    ours = golden.tiny_network()
    outputs = upstream_outputs(
        build_upstream(ours.config, ours.state_dict()), golden.golden_images(), golden.LAYERS
    )
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(golden.NETWORK_FILE))
    with tempfile.TemporaryDirectory() as folder:
        save_file(_preprocess_digests(Path(folder)), str(golden.PREPROCESS_FILE))


if __name__ == "__main__":
    if not UPSTREAM:
        sys.exit("set EASI3R_VGGT_UPSTREAM to the folder holding the official vggt package")
    write_golden()
