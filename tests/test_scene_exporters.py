"""The scene exporters on a small synthetic scene, read back with readers that share no code with them
(evo for TUM, trimesh for PLY/GLB, pycolmap and a COLMAP text parser written here, a nerfstudio
transforms.json reader written here, safetensors)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

from easi3r import writers
from easi3r.geometry import Scene
from easi3r.pipeline import RunResult
from easi3r.plugins import registry, schema_fragments
from easi3r.strategies.scene_exporters import (
    ColmapExporter,
    DepthExporter,
    NerfstudioExporter,
    PointCloudExporter,
    SceneExporter,
    TrajectoryExporter,
)
from easi3r.synthetic import make_scene
from easi3r.types import Encoded, Frames

from .test_writers import export_from_recipe

T, H, W = 4, 24, 32
MIN_CONF = 1.1
EXPORTERS = (
    TrajectoryExporter,
    DepthExporter,
    PointCloudExporter,
    ColmapExporter,
    NerfstudioExporter,
    SceneExporter,
)
NAMES = ("trajectory", "depth", "pointcloud", "colmap", "nerfstudio", "scene")


def synthetic_scene(conf_is_log: bool = False) -> tuple[Scene, torch.Tensor]:
    """(scene, rgb (T, 3, H, W) in [-1, 1]); confidences spread around the 1.1 threshold, so the filter
    drops some static and some dynamic pixels."""
    synth = make_scene(n_frames=T, size=(H, W), seed=0)
    scene = synth.to_scene()
    conf = 1 + 0.4 * torch.rand(T, H, W, generator=torch.Generator().manual_seed(0))
    scene.conf = conf.log() if conf_is_log else conf
    scene.conf_is_log = conf_is_log
    return scene, synth.images()


def fake_result(scene: Scene | None, images: torch.Tensor, paths: list[str] | None = None) -> RunResult:
    return RunResult(
        recipe=OmegaConf.create({"export": {"dilate": 3}, "passes": {"masks_from": "pass1"}}),
        frames=Frames(images=images, paths=paths or [f"clip/{t:05d}.jpg" for t in range(T)]),
        pairs=torch.tensor([[0, 1], [1, 0]]),
        encoded=Encoded(
            tokens=torch.zeros(T, 2, 4),
            positions=torch.tensor([[0, 0], [0, 1]]),
            grid=(1, 2),
            image_size=(H, W),
        ),
        scene=scene,
    )


@pytest.fixture
def result() -> RunResult:
    return fake_result(*synthetic_scene())


def selections(result: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) static and dynamic pixels kept by the confidence filter, computed here independently."""
    scene = result.scene
    raw = scene.conf.exp() if scene.conf_is_log else scene.conf
    kept = (raw > MIN_CONF).numpy()
    dynamic = scene.masks.numpy()
    return kept & ~dynamic, kept & dynamic


def load_cloud(path: Path) -> tuple[np.ndarray, np.ndarray]:
    cloud = trimesh.load(path)
    if isinstance(cloud, trimesh.Scene):  # what trimesh makes of a PLY without vertices
        assert len(cloud.geometry) == 0
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    assert isinstance(cloud, trimesh.PointCloud)
    return np.asarray(cloud.vertices), np.asarray(cloud.colors)[:, :3]


# --- trajectory --------------------------------------------------------------------------------------


def test_trajectory_reads_back_with_evo(result, tmp_path: Path) -> None:
    file_interface = pytest.importorskip("evo.tools.file_interface")
    written = TrajectoryExporter(reference_order=True)(result, tmp_path)
    folder = tmp_path / "scene"
    assert sorted(written) == sorted(
        folder / name
        for name in ("trajectory_tum.txt", "pred_traj.txt", "intrinsics.txt", "focal.txt", "trajectory.png")
    )
    c2w = result.scene.cam2world.double().numpy()

    traj = file_interface.read_tum_trajectory_file(str(folder / "trajectory_tum.txt"))
    np.testing.assert_allclose(traj.timestamps, np.arange(T))
    np.testing.assert_allclose(traj.positions_xyz, c2w[:, :3, 3], atol=1e-6)
    np.testing.assert_allclose(np.stack(traj.poses_se3), c2w, atol=1e-6)
    wxyz = traj.orientations_quat_wxyz  # evo keeps w first internally

    # the reference's order: the same quaternions with w in column 4 instead of column 7
    reference = np.loadtxt(folder / "pred_traj.txt")
    np.testing.assert_allclose(reference[:, :4], np.column_stack([np.arange(T), c2w[:, :3, 3]]), atol=1e-6)
    np.testing.assert_allclose(reference[:, 4:], wxyz, atol=1e-6)
    np.testing.assert_allclose(
        np.loadtxt(folder / "trajectory_tum.txt")[:, 4:], np.roll(wxyz, -1, 1), atol=1e-6
    )

    np.testing.assert_allclose(np.loadtxt(folder / "intrinsics.txt"), result.scene.intrinsics.reshape(T, 9))
    np.testing.assert_allclose(np.loadtxt(folder / "focal.txt"), result.scene.focals)


def test_trajectory_default_has_no_reference_file(result, tmp_path: Path) -> None:
    written = TrajectoryExporter()(result, tmp_path)
    assert tmp_path / "scene" / "pred_traj.txt" not in written
    assert not (tmp_path / "scene" / "pred_traj.txt").exists()


def test_trajectory_png_is_drawn_in_time_colours(result, tmp_path: Path) -> None:
    """The picture exists, is RGB, has a dot in the first and the last frame's colour, and is the same
    bytes for the same poses; one frame and a non-finite pose draw too."""
    TrajectoryExporter()(result, tmp_path)
    path = tmp_path / "scene" / "trajectory.png"
    with Image.open(path) as image:
        assert image.mode == "RGB"
        picture = np.asarray(image)
    assert picture.shape[0] > 300 and picture.shape[1] > 800
    turbo = writers.colorize(np.linspace(0, 1, T)[None])[0]
    for colour in (turbo[0], turbo[-1]):
        assert (picture == colour).all(-1).sum() > 20  # dots in four plots
    TrajectoryExporter()(result, tmp_path / "again")
    assert (tmp_path / "again" / "scene" / "trajectory.png").read_bytes() == path.read_bytes()

    scene, images = synthetic_scene()
    scene.cam2world[1, 0, 3] = float("nan")
    TrajectoryExporter()(fake_result(scene, images), tmp_path / "nan")
    one = make_scene(n_frames=1, size=(H, W), seed=0)
    assert TrajectoryExporter()(fake_result(one.to_scene(), one.images(), ["one.png"]), tmp_path / "one")


# --- depth -------------------------------------------------------------------------------------------


def test_depth_and_conf_files(result, tmp_path: Path) -> None:
    written = DepthExporter()(result, tmp_path)
    assert len(written) == 3 * T and all(path.is_file() for path in written)
    depth = result.scene.depth.numpy()
    for t in range(T):
        saved = np.load(tmp_path / "scene" / "depth" / f"{t:04d}.npy")
        assert saved.dtype == np.float32 and saved.shape == (H, W)
        np.testing.assert_array_equal(saved, depth[t])
        np.testing.assert_array_equal(
            np.load(tmp_path / "scene" / "conf" / f"{t:04d}_conf.npy"), result.scene.conf[t].numpy()
        )
    assert not list((tmp_path / "scene" / "conf").glob("*_logconf.npy"))

    # inverse depth over one scale for the clip: the nearest pixel is drawn as 1, the farthest as 0
    near = np.unravel_index(depth.argmin(), depth.shape)
    far = np.unravel_index(depth.argmax(), depth.shape)
    with Image.open(tmp_path / "scene" / "depth" / f"{near[0]:04d}.png") as image:
        np.testing.assert_array_equal(np.asarray(image)[near[1:]], writers.colorize(np.ones((1, 1)))[0, 0])
    with Image.open(tmp_path / "scene" / "depth" / f"{far[0]:04d}.png") as image:
        picture = np.asarray(image)
        assert picture.shape == (H, W, 3) and picture.dtype == np.uint8
        np.testing.assert_array_equal(picture[far[1:]], writers.colorize(np.zeros((1, 1)))[0, 0])


def test_log_confidence_says_so_in_the_name(tmp_path: Path) -> None:
    scene, images = synthetic_scene(conf_is_log=True)
    DepthExporter()(fake_result(scene, images), tmp_path)
    conf_dir = tmp_path / "scene" / "conf"
    assert sorted(p.name for p in conf_dir.iterdir()) == [f"{t:04d}_logconf.npy" for t in range(T)]
    np.testing.assert_array_equal(np.load(conf_dir / "0002_logconf.npy"), scene.conf[2].numpy())


# --- point clouds ------------------------------------------------------------------------------------


def test_point_clouds_split_filter_and_colour(result, tmp_path: Path) -> None:
    written = PointCloudExporter()(result, tmp_path)
    assert len(written) == 2 * T + 2 and all(path.is_file() for path in written)
    static, dynamic = selections(result)
    assert static.any() and dynamic.any() and not (static | dynamic).all()  # the filter dropped some
    pts, rgb = result.scene.pts3d.numpy(), result.frames.rgb()
    for t in range(T):
        for name, select in (("static", static[t]), ("dynamic", dynamic[t])):
            path = tmp_path / "scene" / "points" / f"{name}_{t:04d}.ply"
            assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
            vertices, colors = load_cloud(path)
            assert len(vertices) == select.sum()
            np.testing.assert_array_equal(vertices, pts[t][select])
            np.testing.assert_array_equal(colors, rgb[t][select])

    fused, fused_colors = load_cloud(tmp_path / "scene" / "points" / "static_fused.ply")
    np.testing.assert_array_equal(fused, pts[static])  # frame-major, row-major order
    np.testing.assert_array_equal(fused_colors, rgb[static])

    glb = trimesh.load(tmp_path / "scene" / "scene.glb")
    assert isinstance(glb, trimesh.Scene)
    dynamic_frames = [t for t in range(T) if dynamic[t].any()]
    expected = {
        "static_fused",
        *(f"dynamic_{t:04d}" for t in dynamic_frames),
        *(f"camera_{t:04d}" for t in range(T)),
    }
    assert set(glb.graph.nodes_geometry) == expected
    for node in glb.graph.nodes_geometry:
        transform, geometry = glb.graph[node]
        np.testing.assert_array_equal(transform, np.eye(4))  # coordinates are the scene's, unmoved
        assert geometry == node
    np.testing.assert_array_equal(glb.geometry["static_fused"].vertices, pts[static])
    np.testing.assert_array_equal(glb.geometry["static_fused"].colors[:, :3], rgb[static])
    for t in dynamic_frames:
        cloud = glb.geometry[f"dynamic_{t:04d}"]
        np.testing.assert_array_equal(cloud.vertices, pts[t][dynamic[t]])
        np.testing.assert_array_equal(cloud.colors[:, :3], rgb[t][dynamic[t]])
    for t in range(T):
        frustum = glb.geometry[f"camera_{t:04d}"]
        assert isinstance(frustum, trimesh.path.Path3D)
        centre = result.scene.cam2world[t, :3, 3].numpy()
        assert np.linalg.norm(frustum.vertices - centre, axis=1).min() < 1e-5  # the apex


def test_glb_keeps_an_even_share_above_max_points_and_the_ply_files_keep_all(result, tmp_path: Path) -> None:
    static, dynamic = selections(result)
    total = int(static.sum() + dynamic.sum())
    export_from_recipe(result, tmp_path, f"export.exporters=[{{name: pointcloud, max_points: {total // 4}}}]")
    glb = trimesh.load(tmp_path / "scene" / "scene.glb")
    clouds = {name: g for name, g in glb.geometry.items() if not name.startswith("camera_")}
    kept = sum(len(cloud.vertices) for cloud in clouds.values())
    assert abs(kept - total // 4) <= len(clouds)  # each cloud rounds its own share
    pts = result.scene.pts3d.numpy()
    assert len(clouds["static_fused"].vertices) == round(static.sum() / 4)
    # a subset of the static points, in their order
    chosen = clouds["static_fused"].vertices
    rows = {tuple(p) for p in pts[static].tolist()}
    assert all(tuple(p) in rows for p in chosen.tolist())
    fused, _ = load_cloud(tmp_path / "scene" / "points" / "static_fused.ply")
    assert len(fused) == static.sum()


def test_fused_cloud_voxel_average(result, tmp_path: Path) -> None:
    voxel = 0.5
    export_from_recipe(result, tmp_path, f"export.exporters=[{{name: pointcloud, voxel: {voxel}}}]")
    fused, colors = load_cloud(tmp_path / "scene" / "points" / "static_fused.ply")
    static, _ = selections(result)
    pts = result.scene.pts3d.numpy()[static].astype(np.float64)
    keys = np.floor(pts / voxel)
    occupied = np.unique(keys, axis=0)
    assert len(fused) == len(occupied) < len(pts)
    # every output point is the mean of the input points of one voxel, so it lies in that voxel
    np.testing.assert_array_equal(np.unique(np.floor(fused / voxel), axis=0), occupied)
    first = (keys == occupied[0]).all(1)
    np.testing.assert_allclose(fused[0], pts[first].mean(0), atol=1e-5)
    expected = np.round(result.frames.rgb()[static][first].mean(0))
    np.testing.assert_array_equal(colors[0], expected)


def test_frames_without_confident_points_get_empty_files(tmp_path: Path) -> None:
    scene, images = synthetic_scene()
    scene.conf[1] = 1.0  # frame 1: nothing above the threshold
    PointCloudExporter()(fake_result(scene, images), tmp_path)
    for name in ("static", "dynamic"):
        vertices, _ = load_cloud(tmp_path / "scene" / "points" / f"{name}_0001.ply")
        assert len(vertices) == 0
    assert "dynamic_0001" not in trimesh.load(tmp_path / "scene" / "scene.glb").graph.nodes_geometry


# --- COLMAP ------------------------------------------------------------------------------------------


def read_colmap(folder: Path) -> tuple[dict, dict, dict]:
    """Minimal COLMAP text reader: cameras {id: (model, w, h, params)}, images {id: (qvec, tvec, camera
    id, name, 2D points (N, 3) as x y point3D_id)}, points {id: (xyz, rgb, error, track (M, 2) as
    image_id point2D_idx)}."""

    def data_lines(name: str, keep_empty: bool = False) -> list[str]:
        lines = (folder / name).read_text().split("\n")[:-1]
        return [line for line in lines if not line.startswith("#") and (keep_empty or line)]

    cameras = {}
    for line in data_lines("cameras.txt"):
        elems = line.split()
        cameras[int(elems[0])] = (elems[1], int(elems[2]), int(elems[3]), np.array(elems[4:], float))
    images = {}
    image_lines = data_lines("images.txt", keep_empty=True)
    assert len(image_lines) % 2 == 0
    for line, observations in zip(image_lines[::2], image_lines[1::2]):
        elems = line.split()
        images[int(elems[0])] = (
            np.array(elems[1:5], float),
            np.array(elems[5:8], float),
            int(elems[8]),
            elems[9],
            np.array(observations.split(), float).reshape(-1, 3),
        )
    points = {}
    for line in data_lines("points3D.txt"):
        elems = line.split()
        assert len(elems) % 2 == 0  # 8 numbers, then (image id, point2D idx) pairs
        points[int(elems[0])] = (
            np.array(elems[1:4], float),
            np.array(elems[4:7], int),
            float(elems[7]),
            np.array(elems[8:], int).reshape(-1, 2),
        )
    return cameras, images, points


def quat_wxyz_to_rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_colmap_model(result, tmp_path: Path) -> None:
    written = ColmapExporter(max_points=50)(result, tmp_path)
    folder = tmp_path / "scene" / "colmap"
    assert all(path.is_file() for path in written) and len(written) == 3 + T
    cameras, images, points = read_colmap(folder)
    scene = result.scene

    # synthetic frames share one K: one camera; COLMAP's pixel centres sit half a pixel further
    assert list(cameras) == [1]
    model, width, height, params = cameras[1]
    k = scene.intrinsics[0].double().numpy()
    assert (model, width, height) == ("PINHOLE", W, H)
    np.testing.assert_allclose(params, [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5], rtol=1e-7)

    assert sorted(images) == list(range(1, T + 1))
    rgb = result.frames.rgb()
    for t in range(T):
        qvec, tvec, camera_id, name, _ = images[t + 1]
        assert camera_id == 1 and name == f"{t:05d}.png" and qvec[0] >= 0
        world2cam = np.eye(4)
        world2cam[:3, :3], world2cam[:3, 3] = quat_wxyz_to_rotmat(qvec), tvec
        np.testing.assert_allclose(np.linalg.inv(world2cam), scene.cam2world[t].double().numpy(), atol=1e-6)
        with Image.open(folder / "images" / name) as image:
            np.testing.assert_array_equal(np.asarray(image), rgb[t])

    static, _ = selections(result)
    candidates = scene.pts3d.numpy()[static]
    candidate_colors = rgb[static]
    assert sorted(points) == list(range(1, 51)) and len(candidates) > 50
    rows = []
    for xyz, color, error, _ in points.values():
        match = np.flatnonzero((candidates == xyz.astype(np.float32)).all(1))
        assert len(match) >= 1 and error == 0
        np.testing.assert_array_equal(candidate_colors[match[0]], color)
        rows.append(match[0])
    assert len(set(rows)) == 50  # drawn without replacement

    # deterministic subsampling
    ColmapExporter(max_points=50)(result, tmp_path / "again")
    assert (folder / "points3D.txt").read_bytes() == (
        tmp_path / "again" / "scene" / "colmap" / "points3D.txt"
    ).read_bytes()


def test_colmap_per_frame_cameras_and_unique_names(tmp_path: Path) -> None:
    scene, images = synthetic_scene()
    scene.intrinsics[2, 0, 0] += 1.0  # one frame with its own focal
    paths = [f"video.mp4#{t}" for t in range(T)]
    ColmapExporter()(fake_result(scene, images, paths), tmp_path)
    cameras, image_entries, points = read_colmap(tmp_path / "scene" / "colmap")
    assert sorted(cameras) == list(range(1, T + 1))
    np.testing.assert_allclose(cameras[3][3][0], scene.intrinsics[2, 0, 0].item(), rtol=1e-7)
    names = [image_entries[t + 1][3] for t in range(T)]
    assert names == [f"video.mp4_{t}.png" for t in range(T)]
    assert [image_entries[t + 1][2] for t in range(T)] == list(range(1, T + 1))
    assert len(points) == selections(fake_result(scene, images))[0].sum()  # under max_points: every point

    collide = [f"{folder}/frame.jpg" for folder in "abcd"]
    ColmapExporter()(fake_result(scene, images, collide), tmp_path / "collide")
    _, collided, _ = read_colmap(tmp_path / "collide" / "scene" / "colmap")
    assert [collided[t + 1][3] for t in range(T)] == [f"{t:04d}_frame.png" for t in range(T)]


@pytest.mark.parametrize("max_points", [50, 100_000])
def test_colmap_points_are_tracked_to_their_pixel(result, tmp_path: Path, max_points: int) -> None:
    """Checked by hand: each point has one observation, the 2D point it names names it back, sits at the
    centre of the pixel the point came from, and the written camera projects the point onto it."""
    ColmapExporter(max_points=max_points)(result, tmp_path)
    cameras, images, points = read_colmap(tmp_path / "scene" / "colmap")
    pts3d, rgb = result.scene.pts3d.numpy(), result.frames.rgb()
    assert sum(len(image[4]) for image in images.values()) == len(points)
    for point_id, (xyz, color, _, track) in points.items():
        assert track.shape == (1, 2)
        image_id, point2d = track[0]
        qvec, tvec, camera_id, _, observations = images[image_id]
        x, y, named = observations[point2d]
        assert named == point_id
        col, row = x - 0.5, y - 0.5
        assert col == int(col) and row == int(row)
        np.testing.assert_array_equal(pts3d[image_id - 1, int(row), int(col)], xyz.astype(np.float32))
        np.testing.assert_array_equal(rgb[image_id - 1, int(row), int(col)], color)
        fx, fy, cx, cy = cameras[camera_id][3]
        cam = quat_wxyz_to_rotmat(qvec) @ xyz + tvec
        projected = np.array([fx * cam[0] / cam[2] + cx, fy * cam[1] / cam[2] + cy])
        assert np.abs(projected - [x, y]).max() < 1.0
    for observations in (image[4] for image in images.values()):
        # within an image, the 2D points follow pixel order (row-major)
        order = (observations[:, 1] - 0.5) * W + observations[:, 0] - 0.5
        assert (np.diff(order) > 0).all()


def test_colmap_reads_back_with_pycolmap(tmp_path: Path) -> None:
    """pycolmap reads the model; every point has a track, and pycolmap's own projection of each point
    with the written camera and pose lands within a pixel of its 2D point."""
    pycolmap = pytest.importorskip("pycolmap")
    scene, images = synthetic_scene()
    scene.intrinsics[2, 0, 0] += 1.0  # per-frame cameras
    ColmapExporter(max_points=200)(fake_result(scene, images), tmp_path)
    model = pycolmap.Reconstruction(str(tmp_path / "scene" / "colmap"))
    assert len(model.images) == T and len(model.points3D) == 200
    assert sum(image.num_points3D for image in model.images.values()) == 200
    for point in model.points3D.values():
        assert point.track.length() >= 1
        for element in point.track.elements:
            image = model.images[element.image_id]
            observed = image.points2D[element.point2D_idx]
            assert observed.has_point3D()
            assert np.abs(image.project_point(point.xyz) - observed.xy).max() < 1.0


# --- nerfstudio -------------------------------------------------------------------------------------

# The fields below are checked against nerfstudio's documented format (docs "Data conventions" /
# "nerfstudio data format", and what its `nerfstudio_dataparser` reads), since nerfstudio itself is not
# installable here: top-level `camera_model` "OPENCV"; per frame `file_path` and `mask_path` relative to
# the JSON's folder, `transform_matrix` 4x4 camera-to-world with OpenGL camera axes (x right, y up,
# z back), and per-frame `fl_x fl_y cx cy w h` (allowed when they are not at the top level); missing
# distortion keys read as 0; masks single-channel, same size as the image, 0 = ignore; pixel centres at
# +0.5 (`Cameras.get_image_coords(pixel_offset=0.5)`); frames sorted by file name.
NERFSTUDIO_FRAME_KEYS = {"file_path", "mask_path", "transform_matrix", "fl_x", "fl_y", "cx", "cy", "w", "h"}


def test_nerfstudio_round_trip(result, tmp_path: Path) -> None:
    written = NerfstudioExporter()(result, tmp_path)
    folder = tmp_path / "scene" / "nerfstudio"
    assert written[0] == folder / "transforms.json" and len(written) == 1 + 2 * T
    meta = json.loads((folder / "transforms.json").read_text())
    assert set(meta) == {"camera_model", "frames"} and meta["camera_model"] == "OPENCV"
    assert [frame["file_path"] for frame in meta["frames"]] == sorted(f["file_path"] for f in meta["frames"])
    scene, rgb = result.scene, result.frames.rgb()
    for t, frame in enumerate(meta["frames"]):
        assert set(frame) == NERFSTUDIO_FRAME_KEYS and (frame["w"], frame["h"]) == (W, H)
        # OpenGL camera axes back to OpenCV: flip y and z
        c2w = np.array(frame["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        np.testing.assert_allclose(c2w, scene.cam2world[t].double().numpy(), atol=1e-6)
        k = scene.intrinsics[t].double().numpy()
        np.testing.assert_allclose(
            [frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"]],
            [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5],
            rtol=1e-7,
        )
        with Image.open(folder / frame["file_path"]) as image:
            assert image.size == (frame["w"], frame["h"]) and image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), rgb[t])
        with Image.open(folder / frame["mask_path"]) as mask:
            assert mask.size == (frame["w"], frame["h"]) and mask.mode == "L"
            # nerfstudio keeps pixels that are not 0: the static ones
            np.testing.assert_array_equal(np.asarray(mask) != 0, ~scene.masks[t].numpy())
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_nerfstudio_without_masks_has_no_mask_path(tmp_path: Path) -> None:
    scene, images = synthetic_scene()
    scene.masks = None
    NerfstudioExporter()(fake_result(scene, images), tmp_path)
    folder = tmp_path / "scene" / "nerfstudio"
    assert not any(
        "mask_path" in frame for frame in json.loads((folder / "transforms.json").read_text())["frames"]
    )
    assert not (folder / "masks").exists()


# --- scene.safetensors -------------------------------------------------------------------------------


def test_scene_safetensors(result, tmp_path: Path) -> None:
    (path,) = SceneExporter()(result, tmp_path)
    assert path == tmp_path / "scene" / "scene.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        loaded = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    shapes = {
        "cam2world": (T, 4, 4),
        "intrinsics": (T, 3, 3),
        "focals": (T,),
        "depth": (T, H, W),
        "conf": (T, H, W),
        "pts3d": (T, H, W, 3),
        "rgb": (T, H, W, 3),
        "masks": (T, H, W),
    }
    assert {key: tuple(value.shape) for key, value in loaded.items()} == shapes
    assert loaded["masks"].dtype == torch.bool
    assert torch.equal(loaded["rgb"], torch.from_numpy(result.frames.rgb()))
    for key in ("cam2world", "intrinsics", "depth", "conf", "pts3d", "masks"):
        torch.testing.assert_close(loaded[key], getattr(result.scene, key))
    torch.testing.assert_close(loaded["focals"], result.scene.focals)
    assert json.loads(metadata["frames"]) == result.frames.paths
    assert json.loads(metadata["conf_is_log"]) is False
    assert metadata["convention"] == "opencv camera-to-world"


# --- all exporters -----------------------------------------------------------------------------------


def test_no_scene_no_files(tmp_path: Path) -> None:
    _, images = synthetic_scene()
    bare = fake_result(None, images)
    for exporter in EXPORTERS:
        assert exporter()(bare, tmp_path) == []
    assert not any(tmp_path.iterdir())


def test_scene_exporters_are_deterministic_and_registered(result, tmp_path: Path) -> None:
    names = NAMES

    def export(folder: Path) -> dict[str, bytes]:
        paths = [p for name in names for p in registry("exporters").create({"name": name})(result, folder)]
        return {str(p.relative_to(folder)): p.read_bytes() for p in paths}

    assert export(tmp_path / "one") == export(tmp_path / "two")
    exporters = registry("exporters")
    for name, cls in zip(names, EXPORTERS):
        assert isinstance(exporters.create({"name": name}), cls)
    assert exporters.create({"name": "pointcloud", "voxel": 0.1}).voxel == 0.1


# --- parameters set from a recipe ------------------------------------------------------------------


def test_recipe_sets_min_conf_camera_size_and_reference_order(result, tmp_path: Path) -> None:
    export_from_recipe(
        result,
        tmp_path,
        "export.exporters=[{name: pointcloud, min_conf: 1.3, camera_size: 0.25},"
        " {name: trajectory, reference_order: true}]",
    )
    raw = result.scene.conf.numpy()
    static, _ = selections(result)
    fused, _ = load_cloud(tmp_path / "scene" / "points" / "static_fused.ply")
    assert 0 < len(fused) == (static & (raw > 1.3)).sum() < static.sum()
    frustum = trimesh.load(tmp_path / "scene" / "scene.glb").geometry["camera_0000"]
    depth_in_camera = (
        np.c_[frustum.vertices, np.ones(len(frustum.vertices))]
        @ np.linalg.inv(result.scene.cam2world[0].double().numpy()).T
    )[:, 2]
    np.testing.assert_allclose(depth_in_camera.max(), 0.25, atol=1e-6)
    assert (tmp_path / "scene" / "pred_traj.txt").is_file()


def test_recipe_sets_colmap_points(result, tmp_path: Path) -> None:
    export_from_recipe(result, tmp_path, "export.exporters=[{name: colmap, max_points: 7, min_conf: 1.2}]")
    lines = (tmp_path / "scene" / "colmap" / "points3D.txt").read_text().splitlines()
    assert len([line for line in lines if not line.startswith("#")]) == 7


@pytest.mark.parametrize("name", NAMES)
def test_documented_defaults_write_the_same_bytes(result, tmp_path: Path, name: str) -> None:
    properties = schema_fragments()[f"export/{name}"].get("properties", {})
    item = json.dumps({"name": name, **{key: spec["default"] for key, spec in properties.items()}})
    bare = export_from_recipe(result, tmp_path / "bare", f"export.exporters=[{name}]")
    assert bare and export_from_recipe(result, tmp_path / "explicit", f"export.exporters=[{item}]") == bare


def test_fragments_document_every_parameter_with_its_default() -> None:
    """Every parameter of every built-in exporter is reachable from a recipe, with the default it has."""
    exporters = registry("exporters")
    for name in exporters.names():
        signature = inspect.signature(type(exporters.create({"name": name})))
        documented = schema_fragments()[f"export/{name}"].get("properties", {})
        assert {key: spec["default"] for key, spec in documented.items()} == {
            key: parameter.default for key, parameter in signature.parameters.items()
        }, name


def test_glb_cap_counts_the_voxel_averaged_cloud(result, tmp_path: Path) -> None:
    export_from_recipe(
        result, tmp_path, "export.exporters=[{name: pointcloud, voxel: 0.01, max_points: 100}]"
    )
    glb = trimesh.load(tmp_path / "scene" / "scene.glb")
    clouds = [g for name, g in glb.geometry.items() if not name.startswith("camera_")]
    assert abs(sum(len(cloud.vertices) for cloud in clouds) - 100) <= len(clouds)
    fused, _ = load_cloud(tmp_path / "scene" / "points" / "static_fused.ply")
    assert len(fused) > 1000  # the PLY keeps every averaged point
