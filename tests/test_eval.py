"""Benchmark readers and ``easi3r eval``: every dataset layout is generated from a synthetic scene with
exact ground truth, read back, and two of them are evaluated end to end with the tiny recipe. The numbers
in ``summary.json`` are checked against metrics recomputed here from the files the run wrote and the
ground truth, with the ground truth brought to the network grid by arithmetic written out in the test."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from easi3r import hookimpl, plugins
from easi3r.errors import Easi3RError
from easi3r.eval.datasets import DATASETS, read_depth, read_mask
from easi3r.eval.metrics import (
    ate,
    depth_metrics,
    f_measure,
    j_mean_recall_per_frame,
    read_tum,
    rpe,
    write_tum,
)
from easi3r.eval.runner import evaluate, network_geometry, to_network_grid
from easi3r.frames import preprocess_image
from easi3r.geometry import Scene
from easi3r.synthetic import SyntheticScene, make_scene

from .test_cli import run_cli

# tiny recipe on 64-pixel frames, masks only, no alignment: about a second per sequence on CPU
FAST = ["frames.size=64", "align.name=none", "export.exporters=[masks]"]


def _scene(seed: int, n_frames: int = 4, size: tuple[int, int] = (48, 64)) -> SyntheticScene:
    return make_scene(n_frames=n_frames, size=size, n_objects=2, seed=seed)


def _save_rgb(path: Path, rgb: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rgb.numpy() * 255).round().astype(np.uint8)).save(path, quality=95)


def _save_mask(path: Path, mask: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        # two object ids, as a DAVIS-2017 annotation has: the reader must merge them
        ids = mask.astype(np.uint8)
        ids[:, ids.shape[1] // 2 :] *= 2
        image = Image.fromarray(ids, mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
        image.save(path)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _save_depth_png(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(depth * 5000).astype(np.uint16)).save(path)


def _save_sintel(path: Path, *arrays: tuple[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.array([202021.25], "<f4").tofile(f)
        for dtype, array in arrays:
            np.asarray(array, dtype).tofile(f)


def _w2c(scene: SyntheticScene) -> np.ndarray:
    return np.linalg.inv(scene.cam2world.double().numpy())


# --- one writer per layout ---------------------------------------------------------------------------


def make_davis(root: Path, name: str, scene: SyntheticScene) -> None:
    for t in range(len(scene)):
        _save_rgb(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", scene.rgb[t])
        _save_mask(root / "Annotations/480p" / name / f"{t:05d}.png", scene.masks[t].numpy(), palette=True)


def make_tum(root: Path, name: str, scene: SyntheticScene) -> None:
    folder = root / name
    stamps = 1341845688.5 + np.arange(len(scene))
    for t, stamp in enumerate(stamps):
        _save_rgb(folder / "rgb_all_stride30" / f"{stamp:.6f}.png", scene.rgb[t])
        _save_depth_png(folder / "depth_all_stride30" / f"{stamp + 0.01:.6f}.png", scene.depth[t].numpy())
    write_tum(folder / "groundtruth_all_stride30.txt", stamps, scene.cam2world.double().numpy())


def _make_camera_json_layout(folder: Path, scene: SyntheticScene, masks: bool) -> None:
    for t in range(len(scene)):
        stem = f"0_{t * 10:05d}"
        _save_rgb(folder / "rgb" / f"{stem}.png", scene.rgb[t])
        (folder / "camera").mkdir(parents=True, exist_ok=True)
        camera = {"w2c": _w2c(scene)[t].tolist(), "K": scene.intrinsics[t].double().tolist()}
        (folder / "camera" / f"{stem}.json").write_text(json.dumps(camera))
        if masks:
            _save_mask(folder / "masks" / f"{stem}.png", scene.masks[t].numpy())
            (folder / "depth_npy").mkdir(parents=True, exist_ok=True)
            np.save(folder / "depth_npy" / f"{stem}.npy", scene.depth[t].numpy())


def make_dycheck(root: Path, name: str, scene: SyntheticScene) -> None:
    _make_camera_json_layout(root / name / "prepare_all_stride10", scene, masks=True)


def make_adt(root: Path, name: str, scene: SyntheticScene) -> None:
    _make_camera_json_layout(root / name / "prepare_all_stride5", scene, masks=False)


def make_sintel(root: Path, name: str, scene: SyntheticScene) -> None:
    w2c = _w2c(scene)
    for t in range(len(scene)):
        stem = f"frame_{t + 1:04d}"
        _save_rgb(root / "final" / name / f"{stem}.png", scene.rgb[t])
        k = scene.intrinsics[t].double().numpy()
        _save_sintel(root / "camdata_left" / name / f"{stem}.cam", ("<f8", k), ("<f8", w2c[t, :3]))
        h, w = scene.size
        depth = scene.depth[t].numpy()
        _save_sintel(root / "depth" / name / f"{stem}.dpt", ("<i4", [w, h]), ("<f4", depth))


def make_bonn(root: Path, name: str, scene: SyntheticScene) -> None:
    folder = root / f"rgbd_bonn_{name}"
    for t in range(len(scene)):
        _save_rgb(folder / "rgb_110" / f"{1548266469 + t}.png", scene.rgb[t])
        _save_depth_png(folder / "depth_110" / f"{1548266469 + t}.png", scene.depth[t].numpy())
    stamps = np.arange(len(scene), dtype=np.float64)
    write_tum(folder / "groundtruth_110.txt", stamps, scene.cam2world.double().numpy())


WRITERS = {
    "davis": make_davis,
    "tum": make_tum,
    "dycheck": make_dycheck,
    "adt": make_adt,
    "sintel": make_sintel,
    "bonn": make_bonn,
}
# sequence names valid for each layout (Sintel and Bonn readers default to named splits)
NAMES = {"davis": "bear", "tum": "rgbd_dataset_freiburg3_walking_xyz", "sintel": "alley_2", "bonn": "crowd2"}
# what each layout carries: (masks, poses, depth, intrinsics, run overrides)
CARRIES = {
    "davis": (True, False, False, False, []),
    "tum": (False, True, True, False, []),
    "dycheck": (True, True, True, True, ["frames.crop=false"]),
    "adt": (False, True, False, True, []),
    "sintel": (False, True, True, True, []),
    "bonn": (False, True, True, False, ["frames.crop=false"]),
}


# --- readers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_reader_reads_its_layout(tmp_path, dataset):
    scene = _scene(seed=3)
    name = NAMES.get(dataset, "seq_a")
    WRITERS[dataset](tmp_path, name, scene)
    (seq,) = DATASETS[dataset](tmp_path, [name])
    masks, poses, depth, intrinsics, overrides = CARRIES[dataset]
    assert seq.name == name
    assert len(seq.frames) == len(scene)
    assert seq.frames == sorted(seq.frames)
    assert seq.run_overrides == overrides
    assert (seq.gt_masks is not None) == masks
    assert (seq.gt_poses is not None) == poses
    assert (seq.gt_depth is not None) == depth
    assert (seq.gt_intrinsics is not None) == intrinsics
    if masks:
        got = np.stack([read_mask(p) for p in seq.gt_masks])
        np.testing.assert_array_equal(got, scene.masks.numpy())
    if poses:
        np.testing.assert_allclose(seq.gt_poses, scene.cam2world.double().numpy(), atol=1e-6)
    if depth:
        got = np.stack([read_depth(p) for p in seq.gt_depth])
        # PNG depth is quantised to 1/5000 m
        np.testing.assert_allclose(
            got, scene.depth.numpy(), atol=1e-4 if dataset in ("tum", "bonn") else 1e-6
        )
    if intrinsics:
        np.testing.assert_allclose(seq.gt_intrinsics, scene.intrinsics.double().numpy(), atol=1e-6)


def test_davis_subsets_and_sequence_selection(tmp_path):
    scene = _scene(seed=1, n_frames=2)
    for name in ("blackswan", "bear", "zz-extra"):
        make_davis(tmp_path, name, scene)
    (tmp_path / "JPEGImages/480p/not-annotated").mkdir()  # frames without annotations are not a sequence
    assert DATASETS["davis"].sequence_names(tmp_path) == ["bear", "blackswan", "zz-extra"]
    assert DATASETS["davis"].sequence_names(tmp_path, ["all"]) == ["bear", "blackswan", "zz-extra"]
    assert DATASETS["davis"].sequence_names(tmp_path, ["zz-extra", "bear"]) == ["zz-extra", "bear"]
    # the DAVIS-16 split needs its 20 sequences: the message names those missing
    with pytest.raises(
        Easi3RError, match=r"has no sequence bmx-trees, breakdance, .*found 3: bear, blackswan"
    ):
        DATASETS["davis16"].sequence_names(tmp_path)
    with pytest.raises(Easi3RError, match="has no sequence nope"):
        DATASETS["davis"].sequence_names(tmp_path, ["nope"])


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_missing_root_is_one_line_with_the_layout(tmp_path, dataset):
    for root, problem in ((tmp_path / "absent", "is not a folder"), (tmp_path, "has no")):
        with pytest.raises(Easi3RError) as info:
            DATASETS[dataset].sequence_names(root)
        message = str(info.value)
        assert "\n" not in message
        assert f"root {root} {problem}" in message
        assert "expected <root>/" in message


def test_davis_error_shows_expected_layout(tmp_path):
    with pytest.raises(Easi3RError) as info:
        DATASETS["davis"].sequence_names(tmp_path)
    assert str(info.value) == (
        f"DAVIS root {tmp_path} has no JPEGImages/480p: expected <root>/JPEGImages/480p/<sequence>/*.jpg "
        "and <root>/Annotations/480p/<sequence>/*.png"
    )


def test_inconsistent_sequence_fails_on_load(tmp_path):
    make_tum(tmp_path, "seq", _scene(seed=2, n_frames=3))
    gt = tmp_path / "seq" / "groundtruth_all_stride30.txt"
    gt.write_text("\n".join(gt.read_text().splitlines()[:-1]) + "\n")  # one pose short
    with pytest.raises(Easi3RError, match="TUM sequence seq: 3 frames but 2 ground-truth poses"):
        list(DATASETS["tum"](tmp_path))


# --- ground truth on the network grid ----------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96, 224, 512])
@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("square_ok", [True, False])
def test_network_geometry_matches_frame_preprocessing(size, crop, square_ok):
    for width, height in ((80, 48), (48, 80), (64, 64), (100, 37), (854, 480), (33, 120), (640, 640)):
        expected = preprocess_image(Image.new("RGB", (width, height)), size, crop, square_ok).size
        assert network_geometry(width, height, size, crop, square_ok)[2] == expected


def test_gt_lands_on_the_pixels_of_its_frame():
    rng = np.random.default_rng(0)
    # no resampling (long side already 64): the cropped GT must equal the cropped frame pixel for pixel
    values = rng.integers(0, 256, (60, 64), dtype=np.uint8)
    frame = np.asarray(preprocess_image(Image.fromarray(values).convert("RGB"), 64))[..., 0]
    grid = to_network_grid(values.astype(np.float32), (64, 60), 64, True, False, frame.shape)
    np.testing.assert_array_equal(grid, frame)
    # with resampling: a blocky mask drawn into the frame agrees with the nearest-resampled GT
    mask = np.kron(rng.random((12, 20)) > 0.5, np.ones((10, 10), dtype=bool))  # 120 × 200
    frame = np.asarray(preprocess_image(Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB"), 96))
    grid = to_network_grid(mask, (200, 120), 96, True, False, frame.shape[:2])
    assert grid.dtype == np.bool_ and grid.shape == frame.shape[:2]
    assert np.mean(grid == (frame[..., 0] > 127)) > 0.97


# --- end to end ----------------------------------------------------------------------------------------


def _expected_gt_masks(masks: torch.Tensor) -> np.ndarray:
    """DAVIS frames of 80 × 48 at size 64: resized to 64 × 38, then rows 3..34 kept (centre crop to 32)."""
    out = []
    for mask in masks.numpy():
        resized = np.asarray(
            Image.fromarray(mask.astype(np.uint8)).resize((64, 38), Image.Resampling.NEAREST)
        )
        out.append(resized[3:35].astype(bool))
    return np.stack(out)


def _written_masks(seq_dir: Path) -> np.ndarray:
    files = sorted((seq_dir / "masks").glob("dynamic_mask_*.png"))
    return np.stack([np.asarray(Image.open(p)) > 0 for p in files])


def test_eval_davis_end_to_end(tmp_path, capsys):
    root, out = tmp_path / "DAVIS", tmp_path / "out"
    scenes = {"bear": _scene(seed=5, size=(48, 80)), "camel": _scene(seed=6, n_frames=3, size=(48, 80))}
    for name, scene in scenes.items():
        make_davis(root, name, scene)
    code, stdout, _ = run_cli(
        capsys, "eval", "--dataset", "davis", "--root", str(root), "-r", "tiny", "-o", str(out), *FAST
    )
    assert code == 0
    assert "2 of 2 sequences scored" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and summary["mask_convention"] == "per_frame"

    ious, fs = [], []
    for name, scene in scenes.items():
        pred, gt = _written_masks(out / name), _expected_gt_masks(scene.masks)
        assert pred.shape == gt.shape == (len(scene), 32, 64)
        jm, jr = j_mean_recall_per_frame(pred, gt)
        f = [f_measure(p, g) for p, g in zip(pred, gt)]
        metrics = summary["sequences"][name]["metrics"]
        assert metrics == pytest.approx({"JM": jm, "JR": jr, "F": np.mean(f)}, abs=1e-12)
        assert json.loads((out / name / "metrics.json").read_text())["metrics"] == metrics
        ious += [j_mean_recall_per_frame(p[None], g[None])[0] for p, g in zip(pred, gt)]
        fs += f
    # the reference's dataset row: every frame of every sequence weighs the same
    assert summary["mean"]["JM"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert summary["mean"]["JR"] == pytest.approx(np.mean(np.array(ious) > 0.5), abs=1e-12)
    assert summary["mean"]["F"] == pytest.approx(np.mean(fs), abs=1e-12)
    table = (out / "summary.md").read_text()
    assert "| sequence | frames | JM ↑ | JR ↑ | F ↑ |" in table
    assert f"| **mean** | 7 | {100 * summary['mean']['JM']:.1f} |" in table

    # the DAVIS benchmark's row: every sequence weighs the same
    again = evaluate("davis", root, "tiny", out, FAST, mask_convention="per_sequence", overwrite=True)
    per_seq = [again.sequences[k].metrics["JM"] for k in range(2)]
    assert again.mean["JM"] == pytest.approx(np.mean(per_seq), abs=1e-12)
    assert again.mean["JM"] != pytest.approx(summary["mean"]["JM"], abs=1e-6)  # 4 vs 3 frames


class _OracleAligner:
    """A stand-in aligner: the ground truth moved by a similarity, plus noise, so every pose and depth
    metric has a known non-trivial value without any optimisation."""

    truth: ClassVar[dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # frame path -> (c2w, depth)

    def __call__(self, frames, outputs, masks, progress) -> Scene:
        rng = np.random.default_rng(0)
        c2w = np.stack([self.truth[p][0] for p in frames.paths])
        depth = np.stack([self.truth[p][1] for p in frames.paths])
        similarity = np.eye(4)
        similarity[:3, :3] = 0.5 * np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
        similarity[:3, 3] = [1.0, 2.0, 3.0]
        pred = similarity @ c2w
        pred[:, :3, :3] /= 0.5  # keep the rotations proper: the scale acts on positions only
        pred[:, :3, 3] += rng.normal(0, 0.05, (len(c2w), 3))
        pred_depth = 0.5 * depth + rng.normal(0, 0.02, depth.shape)
        t, h, w = pred_depth.shape
        return Scene(
            cam2world=torch.from_numpy(pred).float(),
            intrinsics=torch.eye(3).repeat(t, 1, 1),
            depth=torch.from_numpy(pred_depth).float(),
            conf=torch.ones(t, h, w),
            pts3d=torch.zeros(t, h, w, 3),
        )


@pytest.fixture
def oracle_aligner():
    plugin = types.SimpleNamespace(easi3r_aligners=hookimpl(lambda: {"oracle": lambda: _OracleAligner()}))
    plugins.get_plugin_manager(extra_plugins={"test_eval_oracle": plugin})
    yield _OracleAligner.truth
    _OracleAligner.truth.clear()
    plugins.reset_plugin_manager()


def _check_pose_and_depth(summary: dict, out: Path, root: Path, name: str, pred_depth: np.ndarray) -> None:
    metrics = summary["sequences"][name]["metrics"]
    stamps, pred = read_tum(out / name / "eval" / "pred_traj_tum.txt")
    _, gt = read_tum(root / name / "groundtruth_all_stride30.txt")
    np.testing.assert_array_equal(stamps, np.arange(len(gt)))
    assert metrics["ATE"] == pytest.approx(ate(pred, gt), rel=1e-6)
    rpe_trans, rpe_rot = rpe(pred, gt)
    assert metrics["RPE_trans"] == pytest.approx(rpe_trans, rel=1e-6)
    assert metrics["RPE_rot"] == pytest.approx(rpe_rot, rel=1e-5, abs=1e-6)
    assert 0.01 < metrics["ATE"] < 0.2  # the oracle's noise, seen through the Sim(3) alignment
    gt_depth = np.stack([read_depth(p) for p in sorted((root / name / "depth_all_stride30").glob("*.png"))])
    expected = depth_metrics(pred_depth, gt_depth, align="lstsq_scale_shift")
    for key in ("abs_rel", "rmse", "delta_1"):
        assert metrics[f"depth_{key}"] == pytest.approx(expected[key], rel=1e-5)
    assert metrics["depth_scale"] == pytest.approx(2.0, rel=0.05)


def test_eval_tum_poses_and_depth_end_to_end(tmp_path, capsys, oracle_aligner):
    root, out = tmp_path / "tum", tmp_path / "out"
    scenes = {"fr3_walk": _scene(seed=7), "fr3_sit": _scene(seed=8)}
    for name, scene in scenes.items():
        make_tum(root, name, scene)
        for t, frame in enumerate(sorted((root / name / "rgb_all_stride30").glob("*.png"))):
            oracle_aligner[str(frame)] = (
                scene.cam2world[t].double().numpy(),
                scene.depth[t].double().numpy(),
            )
    args = [
        "eval",
        "-d",
        "tum",
        "--root",
        str(root),
        "-r",
        "tiny",
        "-o",
        str(out),
        *FAST,
        "align.name=oracle",
    ]
    code, _, _ = run_cli(capsys, *args)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in scenes:
        # the oracle's depth as the run saw it (float32 in the scene)
        frames = sorted((root / name / "rgb_all_stride30").glob("*.png"))
        pred_depth = _OracleAligner()(types.SimpleNamespace(paths=[str(f) for f in frames]), None, None, None)
        _check_pose_and_depth(summary, out, root, name, pred_depth.depth.double().numpy())
    for key in ("ATE", "RPE_trans", "RPE_rot"):
        assert summary["mean"][key] == pytest.approx(
            np.mean([s["metrics"][key] for s in summary["sequences"].values()])
        )
    weights = [s["metrics"]["depth_valid_pixels"] for s in summary["sequences"].values()]
    assert weights == [4 * 48 * 64] * 2
    assert (
        "| sequence | frames | ATE ↓ | RPE trans ↓ | RPE rot (°) ↓ | Abs Rel ↓ | δ<1.25 ↑ |"
        in (out / "summary.md").read_text()
    )


def test_eval_keeps_frame_subsampling_and_protocol_overrides(tmp_path, oracle_aligner):
    """DyCheck runs uncropped (its protocol override) and a stride override scores only the kept frames."""
    root = tmp_path / "iphone"
    scene = _scene(seed=9, n_frames=5, size=(48, 80))
    make_dycheck(root, "apple", scene)
    frames = sorted((root / "apple/prepare_all_stride10/rgb").glob("*.png"))
    for t, frame in enumerate(frames):
        # depth the oracle returns lives on the 64 × 32 network grid of the uncropped frames
        small = Image.fromarray(scene.depth[t].numpy()).resize((64, 32), Image.Resampling.BILINEAR)
        oracle_aligner[str(frame)] = (scene.cam2world[t].double().numpy(), np.asarray(small, np.float64))
    summary = evaluate(
        "dycheck", root, "tiny", tmp_path / "out", [*FAST, "align.name=oracle", "frames.stride=2"]
    )
    (result,) = summary.sequences
    assert result.ok, result.error
    assert result.frames == 3
    stamps, pred = read_tum(tmp_path / "out/apple/eval/pred_traj_tum.txt")
    np.testing.assert_array_equal(stamps, [0, 2, 4])
    assert result.metrics["ATE"] == pytest.approx(ate(pred, scene.cam2world.double().numpy()[::2]), rel=1e-6)
    # uncropped: 80 × 48 → 64 × 38 → resized (not cropped) to 64 × 32, nearest for the GT
    gt = np.stack(
        [
            np.asarray(
                Image.fromarray(m.astype(np.uint8))
                .resize((64, 38), Image.Resampling.NEAREST)
                .resize((64, 32), Image.Resampling.NEAREST)
            ).astype(bool)
            for m in scene.masks.numpy()[::2]
        ]
    )
    pred_masks = _written_masks(tmp_path / "out/apple")
    assert pred_masks.shape == gt.shape
    assert result.metrics["JM"] == pytest.approx(j_mean_recall_per_frame(pred_masks, gt)[0], abs=1e-12)


def test_failing_sequence_is_recorded_and_the_others_scored(tmp_path, capsys):
    root, out = tmp_path / "DAVIS", tmp_path / "out"
    for k, name in enumerate(("a-ok", "b-broken", "c-ok")):
        make_davis(root, name, _scene(seed=k, n_frames=3))
    (root / "JPEGImages/480p/b-broken/00001.jpg").write_bytes(b"not a jpeg")
    args = ["eval", "-d", "davis", "--root", str(root), "-r", "tiny", "-o", str(out), *FAST]
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 1
    assert "2 of 3 sequences scored" in stdout
    assert "easi3r: error: 1 of 3 sequences failed (first: b-broken: " in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["b-broken"]
    assert "cannot read image" in summary["sequences"]["b-broken"]["error"]
    assert "traceback" not in summary["sequences"]["b-broken"]  # a data problem, not a bug
    assert not (out / "b-broken").exists()
    assert set(summary["sequences"]["a-ok"]["metrics"]) == {"JM", "JR", "F"}
    assert summary["mean"]["JM"] == pytest.approx(
        np.mean([summary["sequences"][k]["metrics"]["JM"] for k in ("a-ok", "c-ok")])  # 3 frames each
    )
    assert "- b-broken: " in (out / "summary.md").read_text()
    # a second evaluation into the same folder needs --overwrite, and says so before running anything
    code, _, stderr = run_cli(capsys, *args)
    assert code == 2 and "pass --overwrite" in stderr


def test_eval_argument_errors_are_one_line(tmp_path, capsys):
    make_davis(tmp_path / "DAVIS", "bear", _scene(seed=1, n_frames=2))
    base = ["eval", "--root", str(tmp_path / "DAVIS"), "-r", "tiny", "-o", str(tmp_path / "out")]
    for extra, fragment in (
        (["-d", "davsi"], "unknown dataset 'davsi'"),
        (["-d", "davis", "--sequences", "bear,nope"], "has no sequence nope"),
        (["-d", "davis", "refine.kk=3"], "refine.kk"),
    ):
        code, _, stderr = run_cli(capsys, *base, *extra)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and fragment in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_eval_tum_with_global_aligner(tmp_path):
    if "global" not in plugins.registry("aligners"):
        pytest.skip("the global aligner is not registered yet")
    root = tmp_path / "tum"
    make_tum(root, "fr3", _scene(seed=4))
    summary = evaluate("tum", root, "tiny", tmp_path / "out", [*FAST, "align.name=global", "align.iters=5"])
    (result,) = summary.sequences
    assert result.ok, result.error
    _, pred = read_tum(tmp_path / "out/fr3/eval/pred_traj_tum.txt")
    _, gt = read_tum(root / "fr3/groundtruth_all_stride30.txt")
    assert result.metrics["ATE"] == pytest.approx(ate(pred, gt), rel=1e-6)
