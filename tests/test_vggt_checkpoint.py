"""Loading VGGT checkpoints: the official file layouts, architecture from the shapes, one-line errors,
and the architecture check in both directions (VGGT loader ↔ DUSt3R loader)."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from easi3r.backends import checkpoint as croco_checkpoint
from easi3r.backends.vggt import checkpoint as vggt_checkpoint
from easi3r.backends.vggt.checkpoint import identify_architecture, load_vggt
from easi3r.errors import CheckpointError

from . import vggt_golden as golden
from .helpers import GOLDEN_NET


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """The tiny preset's state dict as the official files hold it: with a tracking head."""
    state = {key: value.clone() for key, value in golden.tiny_network().state_dict().items()}
    state["track_head.feature_extractor.norm.weight"] = torch.ones(8)
    return state


def _outputs(model):
    return golden.network_outputs(model, golden.golden_images())


def test_pt_file_loads_and_skips_the_tracking_head(tmp_path, weights, caplog):
    path = tmp_path / "model.pt"
    torch.save(weights, path)
    with caplog.at_level(logging.DEBUG, logger="easi3r.backends.vggt.checkpoint"):
        model = load_vggt(path)
    assert "1 track_head.* tensors skipped" in caplog.text
    assert "preset tiny" in caplog.text
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == {key for key in weights if not key.startswith("track_head.")}
    assert all(torch.equal(loaded[key], weights[key]) for key in loaded)
    assert all(p.device.type == "cpu" for p in model.parameters())
    reference = _outputs(golden.tiny_network())
    assert all(torch.equal(value, reference[key]) for key, value in _outputs(model).items())


def test_half_precision_safetensors_in_a_folder(tmp_path, weights):
    """A hub snapshot folder with model.safetensors; float16 weights come out as float32."""
    half = {key: value.half() for key, value in weights.items()}
    save_file(half, str(tmp_path / "model.safetensors"))
    model = load_vggt(tmp_path)
    assert all(value.dtype == torch.float32 for value in model.state_dict().values())
    key = "aggregator.frame_blocks.0.attn.qkv.weight"
    assert torch.equal(model.state_dict()[key], half[key].float())


def test_the_checkpoint_decides_the_architecture(tmp_path, weights):
    path = tmp_path / "model.pt"
    torch.save(weights, path)
    assert load_vggt(path, preset="vggt_1b").config.embed_dim == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda sd: sd.update({"aggregator.extra": torch.zeros(2)}),
            r"1 unexpected \(first: aggregator.extra\)",
        ),
        (lambda sd: sd.pop("depth_head.norm.bias"), r"1 missing keys \(first: depth_head.norm.bias\)"),
        (
            lambda sd: sd.update({"camera_head.embed_pose.bias": torch.zeros(7)}),
            r"1 of another shape \(first: camera_head.embed_pose.bias is 7, not 128\)",
        ),
    ],
    ids=["unexpected", "missing", "shape"],
)
def test_keys_or_shapes_that_fit_no_preset(tmp_path, weights, change, message):
    broken = dict(weights)
    change(broken)
    path = tmp_path / "model.pt"
    torch.save(broken, path)
    with pytest.raises(
        CheckpointError, match=rf"^checkpoint {path} fits no VGGT preset: closest is tiny: {message}"
    ):
        load_vggt(path)


def test_size_is_checked_before_anything_is_built(tmp_path, weights, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    monkeypatch.setattr(vggt_checkpoint, "MAX_PARAMETERS", 1000)
    with pytest.raises(CheckpointError, match=r"holds 1\.54e\+06 parameters; at most 1e\+03"):
        load_vggt(path)


def test_bad_files_are_one_line_errors(tmp_path, weights):
    path = tmp_path / "model.pt"
    torch.save(weights, path)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_vggt(truncated)
    integers = tmp_path / "int.pt"
    torch.save({**weights, "aggregator.camera_token": torch.zeros(1, 2, 1, 64, dtype=torch.int32)}, integers)
    with pytest.raises(CheckpointError, match=r"aggregator\.camera_token holds int32 values"):
        load_vggt(integers)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_vggt(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds neither model\.safetensors nor model\.pt"):
        load_vggt(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="unknown VGGT preset 'huge'; known: vggt_1b, tiny"):
        load_vggt(None, "huge")


def test_random_weights_are_seeded():
    a, b, c = (
        load_vggt(None, "tiny", seed=3),
        load_vggt(None, "tiny", seed=3),
        load_vggt(None, "tiny", seed=4),
    )
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.aggregator.camera_token, c.aggregator.camera_token)


def test_identify_architecture(tmp_path, weights):
    torch.save(weights, tmp_path / "vggt.pt")
    save_file(weights, str(tmp_path / "vggt.safetensors"))
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    assert identify_architecture(tmp_path / "vggt.pt") == "vggt"
    assert identify_architecture(tmp_path / "vggt.safetensors") == "vggt"
    assert identify_architecture(GOLDEN_NET / "weights.pth") == "croco"
    assert identify_architecture(tmp_path / "other.pth") == "unknown"


def test_croco_checkpoint_given_to_the_vggt_loader():
    with pytest.raises(
        CheckpointError, match=r"is a CroCo-family \(DUSt3R/MonST3R\) checkpoint .*not a VGGT one"
    ):
        load_vggt(GOLDEN_NET / "weights.pth")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_vggt_checkpoint_given_to_the_dust3r_loader(tmp_path, weights, suffix):
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(weights, path)
    else:
        save_file(weights, str(path))
    with pytest.raises(
        CheckpointError, match=r"is a VGGT checkpoint \(keys aggregator.\*, camera_head.\*\), not a CroCo"
    ):
        croco_checkpoint.load_checkpoint(path)
