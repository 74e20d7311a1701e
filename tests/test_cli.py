"""The command line: bad input gives one line and a non-zero exit, and leaves no output folder behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from easi3r.cli import main

from .helpers import FRAMES, GOLDEN_NET


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("easi3r: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def two_frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("00000.jpg", "00001.jpg"):
        shutil.copy(FRAMES / name, folder / name)
    return folder


def _bad_checkpoint(tmp_path, kind: str):
    path = tmp_path / f"{kind}.pth"
    if kind == "missing":
        return path, "no such file"
    # the fragments are what follows the path: the path itself holds the case's name
    if kind == "not_a_checkpoint":
        path.write_text("hello")
        return path, f"{path} is not a PyTorch checkpoint"
    if kind == "truncated":
        data = (GOLDEN_NET / "weights.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, f"{path} is truncated or corrupt: its zip directory is missing"
    # wrong architecture: a checkpoint whose decoder lost a layer
    checkpoint = torch.load(GOLDEN_NET / "weights.pth", weights_only=False)
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if not k.startswith("dec_blocks.2.")}
    torch.save(checkpoint, path)
    return path, "missing keys (first: dec_blocks.2."


@pytest.mark.parametrize("kind", ["missing", "not_a_checkpoint", "truncated", "wrong_architecture"])
def test_bad_checkpoints(capsys, tmp_path, two_frames, kind):
    checkpoint, fragment = _bad_checkpoint(tmp_path, kind)
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "run", str(two_frames), "-r", "tiny", "-o", str(out), "--checkpoint", str(checkpoint)
    )
    assert_one_line_error(code, err, fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_frames(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(FRAMES / "00000.jpg", one / "00000.jpg")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(one, corrupt)
    (corrupt / "00001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    video = tmp_path / "empty.mp4"
    video.write_bytes(b"")
    cases = [(empty, str(empty)), (one, "at least 2 frames"), (corrupt, "00001.jpg"), (video, "empty.mp4")]
    for source, fragment in cases:
        out = tmp_path / "out"
        code, _, err = run_cli(capsys, "run", str(source), "-r", "tiny", "-o", str(out))
        assert_one_line_error(code, err, fragment)
        assert not out.exists()


def test_bad_recipes_and_overrides(capsys, tmp_path, two_frames):
    out = str(tmp_path / "out")
    code, _, err = run_cli(capsys, "run", str(two_frames), "-r", "tiyn", "-o", out)
    assert_one_line_error(code, err, "tiyn", "tiny")
    code, _, err = run_cli(capsys, "run", str(two_frames), "-r", "tiny", "-o", out, "refine.kk=3")
    assert_one_line_error(code, err, "refine.kk", "refine.k")
    code, _, err = run_cli(capsys, "run", str(two_frames), "-r", "tiny", "-o", out, "frames.size=big")
    assert_one_line_error(code, err, "frames.size")
    assert not (tmp_path / "out").exists()


def test_output_not_writable(capsys, tmp_path, two_frames):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "run", str(two_frames), "-r", "tiny", "-o", str(blocker / "out"))
    assert_one_line_error(code, err, "a_file")


def test_existing_output_needs_overwrite(capsys, tmp_path, two_frames):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(capsys, "run", str(two_frames), "-r", "tiny", "-o", str(out))
    assert_one_line_error(code, err, "--overwrite")
    assert (out / "keep.txt").exists()
    code, _, _ = run_cli(
        capsys, "run", str(two_frames), "-r", "tiny", "-o", str(out), "--overwrite", "align.name=none"
    )
    assert code == 0
    assert not (out / "keep.txt").exists()
    assert (out / "masks" / "dynamic_mask_0001.png").exists()


def test_validate(capsys):
    for recipe in ("easi3r_dust3r", "easi3r_monst3r", "dust3r_baseline", "tiny"):
        code, out, _ = run_cli(capsys, "validate", recipe)
        assert code == 0 and "valid" in out
    code, _, err = run_cli(capsys, "validate", "tiny", "refine.kk=3")
    assert_one_line_error(code, err, "refine.kk", "did you mean 'refine.k'")
    code, _, err = run_cli(capsys, "validate", "tiny", "refine.k=many")
    assert_one_line_error(code, err, "refine.k")
    code, _, err = run_cli(capsys, "validate", "tiny", "refine.name=kmean")
    assert_one_line_error(code, err, "kmean", "did you mean 'kmeans'")


def test_plugins_and_recipes_listing(capsys):
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0 and "backbones" in out and "easi3r" in out and "kmeans" in out
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0 and "easi3r_dust3r" in out and "tiny" in out
    code, out, _ = run_cli(capsys, "recipes", "easi3r_monst3r")
    assert code == 0 and "monst3r" in out


def test_missing_official_weights_explain_download(capsys, tmp_path, two_frames):
    code, _, err = run_cli(capsys, "run", str(two_frames), "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, "DUSt3R_ViTLarge_BaseDecoder_512_dpt", "backbone.checkpoint")


def test_convert(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "convert", str(GOLDEN_NET / "weights.pth"), str(tmp_path / "hub"))
    assert code == 0
    assert (tmp_path / "hub" / "config.json").is_file() and (tmp_path / "hub" / "model.safetensors").is_file()


def test_real_process_prints_no_traceback(tmp_path):
    env = dict(os.environ, EASI3R_NO_PROGRESS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "easi3r", "run", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_recipe_reference_is_current(capsys):
    """docs/recipes.md is generated; regenerate with ``easi3r recipes --reference > docs/recipes.md``."""
    code, out, _ = run_cli(capsys, "recipes", "--reference")
    assert code == 0
    committed = (FRAMES.parents[2] / "docs" / "recipes.md").read_text()
    assert out == committed, "docs/recipes.md is stale: run `easi3r recipes --reference > docs/recipes.md`"


def test_known_intrinsics_are_held_fixed(capsys, tmp_path, two_frames):
    bad = tmp_path / "bad_K.txt"
    bad.write_text("500 0 128 0 500 72 0 0\n")
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "run", str(two_frames), "-r", "tiny", "-o", str(out), f"align.known_intrinsics={bad}"
    )
    assert_one_line_error(code, err, "bad_K.txt", "9 numbers")
    good = tmp_path / "K.txt"
    good.write_text("300 0 128 0 300 72 0 0 1\n")
    code, _, _ = run_cli(
        capsys,
        "run",
        str(two_frames),
        "-r",
        "tiny",
        "-o",
        str(out),
        f"align.known_intrinsics={good}",
        "align.iters=3",
    )
    assert code == 0
    intrinsics = (out / "scene" / "intrinsics.txt").read_text().split()
    # the focal is stored as 20·log f in float32: fixed up to that rounding
    assert [float(v) for v in intrinsics[:9]] == pytest.approx([300, 0, 128, 0, 300, 72, 0, 0, 1], rel=1e-6)


def test_plugins_verbose_lists_recipe_folders_and_fragments(capsys):
    code, out, _ = run_cli(capsys, "plugins", "-v")
    assert code == 0
    assert "schema fragments: " in out and "export/masks" in out and "rule/formula" in out
    code, out, _ = run_cli(capsys, "plugins")
    assert "schema fragments" not in out


def test_recipes_list_says_what_each_recipe_is(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    assert "tiny               Tiny CPU recipe for the demo and tests:" in out
