"""``easi3r synth``: synthetic sequences on disk hold exactly what :func:`make_scene` rendered, the same
options give the same bytes, bad options leave nothing behind, and ``easi3r eval --dataset synthetic``
scores them end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easi3r.cli import main
from easi3r.errors import Easi3RError
from easi3r.eval.datasets import DATASETS, read_depth, read_mask
from easi3r.strategies.global_align.recipes import _read_intrinsics
from easi3r.synth import parse_size, write_synthetic_dataset
from easi3r.synthetic import TEXTURES, make_scene
from easi3r.trajectory_io import read_tum

from .test_cli import assert_one_line_error, run_cli

SMALL = {"sequences": 2, "frames": 3, "objects": 2, "size": (24, 32), "seed": 5}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    assert write_synthetic_dataset(out, motion="mixed", **SMALL) == ["seq000", "seq001"]
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_options_give_the_same_bytes(small, tmp_path):
    write_synthetic_dataset(tmp_path / "again", motion="mixed", **SMALL)
    assert _files(tmp_path / "again") == _files(small)
    # each sequence has its own seed, so the sequences differ
    depth = [np.load(small / name / "depth/00000.npy") for name in ("seq000", "seq001")]
    assert not np.array_equal(*depth)


def test_files_hold_the_rendered_scene(small):
    manifest = json.loads((small / "dataset.json").read_text())
    assert manifest["options"]["motion"] == "mixed" and manifest["options"]["size"] == [24, 32]
    for k, (name, motion) in enumerate((("seq000", "orbit"), ("seq001", "forward"))):
        assert manifest["sequences"][k] == {"name": name, "motion": motion, "seed": 5 + k}
        scene = make_scene(n_frames=3, size=(24, 32), n_objects=2, motion=motion, seed=5 + k)
        folder = small / name
        names = [f"{t:05d}" for t in range(3)]
        for sub, suffix in (("rgb", ".png"), ("masks", ".png"), ("depth", ".npy")):
            assert sorted(p.name for p in (folder / sub).iterdir()) == [n + suffix for n in names]
        for t, stem in enumerate(names):
            rgb = np.asarray(Image.open(folder / "rgb" / f"{stem}.png"))
            assert rgb.dtype == np.uint8 and rgb.shape == (24, 32, 3)
            assert np.array_equal(rgb, (scene.rgb[t].numpy() * 255).round().astype(np.uint8))
            mask = np.asarray(Image.open(folder / "masks" / f"{stem}.png"))
            assert set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask == 255, scene.masks[t].numpy())
            depth = np.load(folder / "depth" / f"{stem}.npy")
            assert depth.dtype == np.float32 and np.array_equal(depth, scene.depth[t].numpy())
        stamps, poses = read_tum(folder / "poses.txt")
        assert stamps.tolist() == [0, 1, 2]
        assert np.allclose(poses, scene.cam2world.double().numpy(), atol=1e-6)
        # the aligner's align.known_intrinsics reads the same file
        assert torch.equal(_read_intrinsics(str(folder / "intrinsics.txt")), scene.intrinsics)


def test_reader_loads_every_ground_truth(small):
    reader = DATASETS["synthetic"]
    assert reader.sequence_names(small) == ["seq000", "seq001"]
    seq = reader.load(small, "seq001")
    scene = make_scene(n_frames=3, size=(24, 32), n_objects=2, motion="forward", seed=6)
    assert [p.name for p in seq.frames] == ["00000.png", "00001.png", "00002.png"]
    assert np.array_equal(np.stack([read_mask(p) for p in seq.gt_masks]), scene.masks.numpy())
    assert np.array_equal(np.stack([read_depth(p) for p in seq.gt_depth]), scene.depth.numpy())
    assert np.allclose(seq.gt_poses, scene.cam2world.double().numpy(), atol=1e-6)
    assert np.array_equal(seq.gt_intrinsics, scene.intrinsics.double().numpy())


def test_reader_refuses_broken_sequences(small, tmp_path):
    broken = tmp_path / "broken"
    write_synthetic_dataset(broken, sequences=1, frames=2, size=(16, 16))
    (broken / "seq000/masks/00001.png").unlink()
    with pytest.raises(Easi3RError, match=r"masks/\*\.png names do not match"):
        DATASETS["synthetic"].load(broken, "seq000")
    (broken / "seq000/masks/00001.png").write_bytes((small / "seq000/masks/00001.png").read_bytes())
    (broken / "seq000/intrinsics.txt").write_text("1 2 3\n")
    with pytest.raises(Easi3RError, match="9 numbers"):
        DATASETS["synthetic"].load(broken, "seq000")
    with pytest.raises(Easi3RError, match="no <sequence>/rgb"):
        DATASETS["synthetic"].sequence_names(tmp_path)


def test_textures_change_colours_only():
    base = make_scene(n_frames=2, size=(24, 32), seed=2)
    assert torch.equal(make_scene(n_frames=2, size=(24, 32), seed=2, texture="pattern").rgb, base.rgb)
    for texture in TEXTURES[1:]:
        other = make_scene(n_frames=2, size=(24, 32), seed=2, texture=texture)
        assert not torch.equal(other.rgb, base.rgb)
        assert torch.equal(other.depth, base.depth) and torch.equal(other.masks, base.masks)
        assert torch.equal(other.cam2world, base.cam2world)
    plain = make_scene(n_frames=1, size=(24, 32), seed=2, texture="plain")
    assert len(torch.unique(plain.rgb.reshape(-1, 3), dim=0)) < 12  # flat faces and objects
    with pytest.raises(ValueError, match="texture"):
        make_scene(texture="marble")


def test_cli_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", "-o", str(out), "--sequences", "2", "--frames", "2", "--size", "16x24"]
    code, stdout, stderr = run_cli(capsys, *args, "--texture", "noise", "--seed", "3", "--objects", "1")
    assert code == 0 and stdout == f"easi3r: wrote 2 sequences to {out}\n"
    assert stderr.splitlines() == [
        "easi3r synth: seq000 (1/2): orbit, 2 frames, seed 3",
        "easi3r synth: seq001 (2/2): orbit, 2 frames, seed 4",
    ]
    assert json.loads((out / "dataset.json").read_text())["options"]["texture"] == "noise"
    assert_one_line_error(*run_cli(capsys, *args)[::2], "not empty", "--overwrite")
    code, _, _ = run_cli(capsys, *args, "--sequences", "1", "--overwrite")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["dataset.json", "seq000"]


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--frames", "1"], "--frames must be at least 2"),
        (["--size", "0x5"], "--size must be at least 16x16"),
        (["--size", "big"], "HEIGHTxWIDTH"),
        (["--sequences", "0"], "--sequences"),
        (["--objects", "-1"], "--objects"),
        (["--seed", "-3"], "--seed"),
        (["--motion", "spiral"], "--motion"),
        (["--texture", "marble"], "--texture"),
    ],
)
def test_cli_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, option, fragment):
    try:
        code = main(["synth", "-o", str(tmp_path / "out"), *option])
    except SystemExit as exc:  # argparse's own refusals (an unknown choice) exit from the parser
        code = exc.code
    assert_one_line_error(code, capsys.readouterr().err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_parse_size():
    assert parse_size("72x128") == (72, 128) and parse_size(" 9 X 16 ") == (9, 16)


def test_eval_synthetic_end_to_end(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "eval"
    write_synthetic_dataset(root, sequences=2, frames=4, size=(72, 128), motion="mixed")
    code, stdout, _ = run_cli(
        capsys, "eval", "--dataset", "synthetic", "--root", str(root), "-r", "tiny", "-o", str(out),
        "frames.size=128", "align.iters=5",
    )  # fmt: skip
    assert code == 0, stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["sequences"]) == ["seq000", "seq001"] and not summary["failed"]
    for seq in summary["sequences"].values():
        assert {"JM", "F", "ATE", "RPE_rot", "depth_abs_rel"} <= set(seq["metrics"]), seq
        assert seq["frames"] == 4 and seq["metrics"]["depth_valid_pixels"] == 4 * 64 * 128
