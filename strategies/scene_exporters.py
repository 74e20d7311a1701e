"""Exporters of the aligned scene (``result.scene``): trajectory, depth, point clouds, COLMAP, nerfstudio,
rerun, safetensors.

File layout and conventions: ``docs/outputs.md``, section "Scene (aligned geometry)"; parameters come from
the recipe as for the mask exporters (:mod:`easi3r.strategies.exporters`). Every exporter writes nothing
and returns ``[]`` when the run produced no scene (aligner ``none``). Coordinates are
written as the aligner returns them: OpenCV cameras (x right, y down, z forward), camera-to-world poses,
no re-centring or axis flip, so every file describes the same world (nerfstudio's file turns the camera
axes to its OpenGL convention; the world stays the same).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from easi3r import writers
from easi3r.errors import Easi3RError
from easi3r.outputs import REFERENCE_GLB_MIN_CONF
from easi3r.strategies.exporters import ExporterBase
from easi3r.strategies.trajectory_plot import plot_trajectory
from easi3r.trajectory_io import write_tum

if TYPE_CHECKING:
    from torch import Tensor

    from easi3r.geometry import Scene
    from easi3r.pipeline import RunResult

# deviation for long videos: the reference's GLB holds every point (300 frames of 256×144: 11 million)
GLB_MAX_POINTS = 4_000_000

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# --- shared helpers ----------------------------------------------------------------------------------


class AlignedSceneExporter(ExporterBase["Scene"]):
    """An exporter of the aligned scene, into ``scene/``."""

    folder = "scene"

    @staticmethod
    def input(result: RunResult) -> Scene | None:
        scene = result.scene
        if scene is not None and len(scene) != len(result.frames):
            raise ValueError(f"scene has {len(scene)} frames, the run {len(result.frames)}")
        if scene is not None and tuple(scene.depth.shape[1:]) != result.frames.size:
            raise ValueError(f"scene is {tuple(scene.depth.shape[1:])}, the frames {result.frames.size}")
        return scene


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _conf_threshold(scene: Scene, min_conf: float) -> float:
    """``min_conf`` is in raw units (1 + exp(x)); compare in the unit the scene stores."""
    return float(np.log(min_conf)) if scene.conf_is_log else min_conf


def _kept(scene: Scene, min_conf: float) -> NDArray[np.bool_]:
    """(T, H, W): pixels confident enough and with a finite world point."""
    conf = _np(scene.conf)
    finite = np.isfinite(_np(scene.pts3d)).all(-1)
    return (conf > _conf_threshold(scene, min_conf)) & finite


def _dynamic(scene: Scene) -> NDArray[np.bool_]:
    """(T, H, W) dynamic pixels; a scene without masks is all static."""
    if scene.masks is None:
        return np.zeros(tuple(scene.depth.shape), bool)
    return _np(scene.masks).astype(bool)


def _savetxt(path: Path, rows: np.ndarray, fmt: str = "%.9g") -> Path:
    # 9 significant digits give float32 values back exactly
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, rows, fmt=fmt)
    return path


def _save_npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


# --- trajectory --------------------------------------------------------------------------------------


class TrajectoryExporter(AlignedSceneExporter):
    """``scene/trajectory_tum.txt`` (TUM ``t x y z qx qy qz qw``, camera-to-world, t = frame index),
    ``scene/intrinsics.txt`` (T rows of the 9 entries of K, row-major), ``scene/focal.txt`` and
    ``scene/trajectory.png`` (camera centres from above and per axis, :func:`plot_trajectory`).

    ``reference_order`` also writes ``scene/pred_traj.txt`` with the quaternion w-first
    (``t x y z qw qx qy qz``), the reference's layout, for its tools.
    """

    def __init__(self, reference_order: bool = False) -> None:
        self.reference_order = reference_order

    def write(self, result: RunResult, scene: Scene, folder: Path) -> list[Path]:
        times = np.arange(len(scene), dtype=np.float64)
        c2w = _np(scene.cam2world).astype(np.float64)
        written = [folder / "trajectory_tum.txt"]
        write_tum(written[0], times, c2w)
        if self.reference_order:
            written.append(folder / "pred_traj.txt")
            write_tum(written[-1], times, c2w, quat_order="wxyz")
        written.append(_savetxt(folder / "intrinsics.txt", _np(scene.intrinsics).reshape(len(scene), 9)))
        written.append(_savetxt(folder / "focal.txt", _np(scene.focals)))
        written.append(writers.write_png(folder / "trajectory.png", plot_trajectory(c2w[:, :3, 3])))
        return written


# --- depth and confidence ----------------------------------------------------------------------------


class DepthExporter(AlignedSceneExporter):
    """``scene/depth/{t:04d}.npy`` (float32 z-depth), ``scene/depth/{t:04d}.png`` (inverse depth, turbo,
    one scale for the whole clip) and ``scene/conf/{t:04d}_conf.npy`` (raw ``1 + exp(x)``) or
    ``{t:04d}_logconf.npy`` (when the scene stores log-confidence)."""

    def write(self, result: RunResult, scene: Scene, folder: Path) -> list[Path]:
        depth = _np(scene.depth).astype(np.float32)
        conf = _np(scene.conf).astype(np.float32)
        suffix = "logconf" if scene.conf_is_log else "conf"
        pictures = self._pictures(depth)
        written = []
        for t in range(len(scene)):
            written.append(_save_npy(folder / "depth" / f"{t:04d}.npy", depth[t]))
            written.append(writers.write_png(folder / "depth" / f"{t:04d}.png", pictures[t]))
            written.append(_save_npy(folder / "conf" / f"{t:04d}_{suffix}.npy", conf[t]))
        return written

    @staticmethod
    def _pictures(depth: np.ndarray) -> list[np.ndarray]:
        """Inverse depth spreads near structure over the colour scale, where depth would crush it; one
        min-max over the clip keeps colours comparable between frames. Pixels without a positive finite
        depth are drawn like the farthest ones (NaN → 0 in :func:`writers.colorize`)."""
        valid = np.isfinite(depth) & (depth > 0)
        inverse = np.full(depth.shape, np.nan, np.float32)
        inverse[valid] = 1.0 / depth[valid]
        if valid.any():
            low, high = inverse[valid].min(), inverse[valid].max()
            inverse = (inverse - low) / max(high - low, 1e-12)
        return [writers.colorize(frame) for frame in inverse]


# --- point clouds and GLB ----------------------------------------------------------------------------


def _voxel_average(
    points: np.ndarray, colors: np.ndarray, voxel: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel: the mean position and colour of the points in it (sorted by voxel,
    so the result is deterministic). ``None`` keeps every point."""
    if voxel is None or len(points) == 0:
        return points, colors
    if voxel <= 0:
        raise ValueError(f"voxel must be > 0 or None, got {voxel}")
    keys = np.floor(points / voxel).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3), np.float64)
    np.add.at(sums, inverse, points.astype(np.float64))
    color_sums = np.zeros((len(counts), 3), np.float64)
    np.add.at(color_sums, inverse, colors.astype(np.float64))
    mean_colors = np.round(color_sums / counts[:, None]).astype(np.uint8)
    return (sums / counts[:, None]).astype(points.dtype), mean_colors


def _frustum(
    cam2world: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int], depth: float
) -> np.ndarray:
    """(8, 2, 3) line segments: apex to the four image corners at z = ``depth``, and the image rectangle.
    Pixel centres are at integer coordinates, so the image's outer edges are at -0.5 and W-0.5."""
    height, width = size
    corners = np.array(
        [[-0.5, -0.5, 1], [width - 0.5, -0.5, 1], [width - 0.5, height - 0.5, 1], [-0.5, height - 0.5, 1]]
    )
    cam = (np.linalg.inv(intrinsics) @ corners.T).T * depth
    world = cam @ cam2world[:3, :3].T + cam2world[:3, 3]
    apex = cam2world[:3, 3]
    sides = [(apex, corner) for corner in world]
    rim = [(world[k], world[(k + 1) % 4]) for k in range(4)]
    return np.array(sides + rim)


class PointCloudExporter(AlignedSceneExporter):
    """Per-frame coloured clouds ``scene/points/{static,dynamic}_{t:04d}.ply``, the fused static cloud
    ``scene/points/static_fused.ply`` and ``scene/scene.glb`` (fused static cloud, per-frame dynamic
    clouds ``dynamic_{t:04d}``, camera frusta ``camera_{t:04d}``).

    ``min_conf``: keep pixels whose raw confidence exceeds it (the reference demo's GLB uses 1.1);
    ``voxel``: edge of the voxels the fused cloud is averaged over, ``None`` keeps every point;
    ``camera_size``: frustum depth in scene units, ``None`` = 5% of the diagonal of the exported points'
    (and cameras') bounding box; ``max_points``: the GLB keeps at most about this many points (an even,
    fixed-seed share of each cloud; the PLY files keep every point).
    """

    def __init__(
        self,
        min_conf: float = REFERENCE_GLB_MIN_CONF,
        voxel: float | None = None,
        camera_size: float | None = None,
        max_points: int = GLB_MAX_POINTS,
    ) -> None:
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.min_conf = min_conf
        self.voxel = voxel
        self.camera_size = camera_size
        self.max_points = max_points

    def write(self, result: RunResult, scene: Scene, folder: Path) -> list[Path]:
        points, rgb = _np(scene.pts3d), result.frames.rgb()
        kept, dynamic = _kept(scene, self.min_conf), _dynamic(scene)
        static, moving = kept & ~dynamic, kept & dynamic
        written = []
        for t in range(len(scene)):
            for name, select in (("static", static[t]), ("dynamic", moving[t])):
                path = folder / "points" / f"{name}_{t:04d}.ply"
                written.append(
                    writers.write_ply(path, [(points[t][select], rgb[t][select])], int(select.sum()))
                )
        fused_path = folder / "points" / "static_fused.ply"
        fused = None
        if self.voxel is None:
            # every static point: written frame by frame, never gathered (it grows with the video)
            blocks = ((points[t][static[t]], rgb[t][static[t]]) for t in range(len(scene)))
            written.append(writers.write_ply(fused_path, blocks, int(static.sum())))
        else:
            fused = _voxel_average(points[static], rgb[static], self.voxel)
            written.append(writers.write_ply(fused_path, [fused], len(fused[0])))
        written.append(self._glb(scene, points, rgb, static, moving, fused, folder / "scene.glb"))
        return written

    def _glb(
        self,
        scene: Scene,
        points: np.ndarray,
        rgb: np.ndarray,
        static: NDArray[np.bool_],
        moving: NDArray[np.bool_],
        fused: tuple[np.ndarray, np.ndarray] | None,
        path: Path,
    ) -> Path:
        """``fused``: the voxel-averaged static cloud, or None for every static point. The points are
        chosen first (indices), then streamed into the file frame by frame: a long video's GLB never
        sits in memory whole."""
        # viewers slow down past a few million points: above max_points, an even, fixed-seed share of
        # every cloud is kept
        static_count = int(static.sum()) if fused is None else len(fused[0])
        share = min(1.0, self.max_points / max(1, static_count + int(moving.sum())))
        rng = np.random.default_rng(0)
        flat_points, flat_rgb = points.reshape(len(points), -1, 3), rgb.reshape(len(rgb), -1, 3)
        if fused is None:
            chosen = _static_choice(static, share, rng)
            blocks = [(t, index) for t, index in enumerate(chosen)]
            parts = [_cloud_part("static_fused", flat_points, flat_rgb, blocks)]
        else:
            index = _subsample(np.arange(static_count), share, rng)
            parts = [_cloud_part("static_fused", fused[0][None], fused[1][None], [(0, index)])]
        for t in range(len(scene)):
            index = _subsample(np.flatnonzero(moving[t]), share, rng)
            parts.append(_cloud_part(f"dynamic_{t:04d}", flat_points, flat_rgb, [(t, index)]))
        c2w = _np(scene.cam2world).astype(np.float64)
        intrinsics = _np(scene.intrinsics).astype(np.float64)
        size = self._frustum_size(c2w, [(part.low, part.high) for part in parts if part.count])
        # colour the cameras along time (turbo: blue first, red last) so the trajectory's direction shows
        shades = writers.colorize(np.linspace(0, 1, len(scene))[None])[0]
        for t in range(len(scene)):
            segments = _frustum(c2w[t], intrinsics[t], tuple(scene.depth.shape[1:]), size).reshape(-1, 3)
            colors = np.tile(shades[t], (len(segments), 1)).astype(np.uint8)
            parts.append(
                writers.GlbPart(
                    f"camera_{t:04d}", len(segments), segments.min(0), segments.max(0),
                    lambda block=(segments, colors): [block], lines=True,
                )
            )  # fmt: skip
        return writers.write_glb(path, parts)

    def _frustum_size(self, c2w: np.ndarray, bounds: list[tuple[np.ndarray, np.ndarray]]) -> float:
        if self.camera_size is not None:
            return self.camera_size
        low = np.min([c2w[:, :3, 3].min(0), *(low for low, _ in bounds)], axis=0)
        high = np.max([c2w[:, :3, 3].max(0), *(high for _, high in bounds)], axis=0)
        diagonal = float(np.linalg.norm(high - low))
        return 0.05 * diagonal if diagonal > 0 else 1.0


def _static_choice(static: NDArray[np.bool_], share: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per frame, the flat pixel indices of the static points the GLB keeps: one draw over all static
    points of the video (as :func:`_subsample` of their joint index), split by frame without building it."""
    counts = static.reshape(len(static), -1).sum(1)
    if share >= 1.0:
        return [np.flatnonzero(frame) for frame in static]
    drawn = np.sort(rng.choice(int(counts.sum()), round(int(counts.sum()) * share), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    bounds = np.searchsorted(drawn, starts)
    return [
        np.flatnonzero(static[t])[drawn[bounds[t] : bounds[t + 1]] - starts[t]] for t in range(len(static))
    ]


def _cloud_part(
    name: str, points: np.ndarray, rgb: np.ndarray, blocks: list[tuple[int, np.ndarray]]
) -> writers.GlbPart:
    """A GLB point cloud of ``points[t][index]`` for each ``(t, index)`` of ``blocks`` (frames ``(T, N, 3)``)."""
    count = sum(len(index) for _, index in blocks)
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for t, index in blocks:
        if len(index):
            low = np.minimum(low, points[t][index].min(0))
            high = np.maximum(high, points[t][index].max(0))
    return writers.GlbPart(
        name, count, low, high, lambda: ((points[t][index], rgb[t][index]) for t, index in blocks)
    )


def _subsample(index: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``index`` itself, or an ordered fixed-seed draw of ``share`` of it without replacement."""
    if share >= 1.0:
        return index
    return np.sort(rng.choice(index, round(len(index) * share), replace=False))


# --- COLMAP ------------------------------------------------------------------------------------------


def _image_names(paths: list[str]) -> list[str]:
    """The frames' file names with a ``.png`` suffix (the copies are PNG). Characters that are unsafe in
    file names (e.g. the ``#`` of ``video.mp4#12``) become ``_``; if names collide, every name gets its
    frame index as a prefix, which also keeps frame order under the name sort many loaders apply."""
    names = []
    for path in paths:
        name = Path(path).name
        if Path(name).suffix.lower() in _IMAGE_SUFFIXES:
            name = Path(name).stem
        names.append(re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".png")
    if len(set(names)) < len(names):
        names = [f"{t:04d}_{name}" for t, name in enumerate(names)]
    return names


class ColmapExporter(AlignedSceneExporter):
    """COLMAP text model of the static scene in ``scene/colmap/``: ``cameras.txt`` (PINHOLE),
    ``images.txt`` (world-to-camera poses and the 2D points), ``points3D.txt`` (static points, each with
    a one-observation track: the pixel it came from) and the frames as PNG in ``images/``, the starting
    point 3D Gaussian splatting / NeRF tools expect.

    ``max_points``: at most this many points, drawn without replacement by a fixed-seed generator;
    ``min_conf``: as for the point clouds.
    """

    folder = "scene/colmap"

    def __init__(self, max_points: int = 100_000, min_conf: float = REFERENCE_GLB_MIN_CONF) -> None:
        if max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {max_points}")
        self.max_points = max_points
        self.min_conf = min_conf

    def write(self, result: RunResult, scene: Scene, folder: Path) -> list[Path]:
        names = _image_names(list(result.frames.paths))
        rgb = result.frames.rgb()
        index = self._sample(scene)
        tracks = _Tracks.of(index, tuple(scene.depth.shape))
        camera_ids = self._write_cameras(folder / "cameras.txt", scene)
        self._write_images(folder / "images.txt", scene, camera_ids, names, tracks)
        self._write_points(folder / "points3D.txt", scene, rgb, index, tracks)
        written = [folder / "cameras.txt", folder / "images.txt", folder / "points3D.txt"]
        written += [writers.write_png(folder / "images" / name, image) for name, image in zip(names, rgb)]
        return written

    def _sample(self, scene: Scene) -> np.ndarray:
        """Flat (T·H·W) indices of the points, increasing: the kept static pixels, or a fixed-seed draw of
        ``max_points`` of them, drawn before gathering (the static points grow with the video)."""
        index = np.flatnonzero(_kept(scene, self.min_conf) & ~_dynamic(scene))
        if len(index) > self.max_points:
            index = index[
                np.sort(np.random.default_rng(0).choice(len(index), self.max_points, replace=False))
            ]
        return index

    @staticmethod
    def _write_cameras(path: Path, scene: Scene) -> list[int]:
        """One camera per frame, or a single one when every frame has the same K. COLMAP puts pixel
        centres at +0.5 (the image spans [0, W]) where the scene puts them at integers, so cx, cy shift by
        half a pixel: the same rays, in COLMAP's convention."""
        intrinsics = _np(scene.intrinsics).astype(np.float64)
        height, width = scene.depth.shape[1:]
        shared = bool((intrinsics == intrinsics[:1]).all())
        unique = intrinsics[:1] if shared else intrinsics
        lines = [
            "# Camera list with one line of data per camera:",
            "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
            f"# Number of cameras: {len(unique)}",
        ]
        for c, k in enumerate(unique, start=1):
            params = (k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5)
            lines.append(f"{c} PINHOLE {width} {height} " + " ".join(f"{p:.17g}" for p in params))
        path.write_text("\n".join(lines) + "\n")
        return [1] * len(scene) if shared else list(range(1, len(scene) + 1))

    @staticmethod
    def _write_images(
        path: Path, scene: Scene, camera_ids: list[int], names: list[str], tracks: _Tracks
    ) -> None:
        c2w = _np(scene.cam2world).astype(np.float64)
        rot_w2c = c2w[:, :3, :3].transpose(0, 2, 1)
        trans_w2c = -np.einsum("tij,tj->ti", rot_w2c, c2w[:, :3, 3])
        quat = Rotation.from_matrix(rot_w2c).as_quat()  # x y z w
        quat = np.roll(quat, 1, axis=1)  # COLMAP: w x y z
        quat *= np.where(quat[:, :1] < 0, -1.0, 1.0)  # q and -q are one rotation: pick qw >= 0
        mean = len(tracks.frame) / len(scene)
        lines = [
            "# Image list with two lines of data per image:",
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
            "#   POINTS2D[] as (X, Y, POINT3D_ID)",
            f"# Number of images: {len(scene)}, mean observations per image: {mean:.17g}",
        ]
        # the pixel centre (col, row) is (col + 0.5, row + 0.5) in COLMAP's image coordinates
        x, y = tracks.col + 0.5, tracks.row + 0.5
        point_ids = np.arange(1, len(tracks.frame) + 1)
        bounds = np.searchsorted(tracks.frame, np.arange(len(scene) + 1))
        for t in range(len(scene)):
            numbers = " ".join(f"{v:.17g}" for v in (*quat[t], *trans_w2c[t]))
            chunk = slice(bounds[t], bounds[t + 1])
            observations = zip(x[chunk].tolist(), y[chunk].tolist(), point_ids[chunk].tolist())
            lines += [
                f"{t + 1} {numbers} {camera_ids[t]} {names[t]}",
                " ".join(f"{u:.17g} {v:.17g} {i}" for u, v, i in observations),
            ]
        path.write_text("\n".join(lines) + "\n")

    @staticmethod
    def _write_points(path: Path, scene: Scene, rgb: np.ndarray, index: np.ndarray, tracks: _Tracks) -> None:
        points = _np(scene.pts3d).reshape(-1, 3)[index].astype(np.float32)
        colors = rgb.reshape(-1, 3)[index]
        lines = [
            "# 3D point list with one line of data per point:",
            "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
            f"# Number of points: {len(points)}, mean track length: {1 if len(points) else 0}",
        ]
        rows = zip(points.tolist(), colors.tolist(), (tracks.frame + 1).tolist(), tracks.point2d.tolist())
        lines += [
            f"{i} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} 0 {image_id} {point2d}"
            for i, ((x, y, z), (r, g, b), image_id, point2d) in enumerate(rows, start=1)
        ]
        path.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class _Tracks:
    """Where each COLMAP point came from: its frame, pixel row and column, and its position among the
    2D points of that frame's image (POINT2D_IDX)."""

    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    point2d: np.ndarray

    @staticmethod
    def of(index: np.ndarray, shape: tuple[int, int, int]) -> _Tracks:
        """``index``: increasing flat indices into ``shape`` (T, H, W), so each frame's points are
        contiguous and numbered in pixel order."""
        frame, row, col = np.unravel_index(index, shape)
        first = np.searchsorted(frame, frame)  # the first point of each point's frame
        return _Tracks(frame, row, col, np.arange(len(index)) - first)


# --- nerfstudio -------------------------------------------------------------------------------------

# camera axes x right, y down, z forward (OpenCV) → x right, y up, z back (OpenGL / Blender, nerfstudio's)
_OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


class NerfstudioExporter(AlignedSceneExporter):
    """nerfstudio's ``transforms.json`` in ``scene/nerfstudio/``: per-frame ``transform_matrix``
    (camera-to-world, OpenGL camera axes) and intrinsics (``OPENCV`` model, no distortion), the frames in
    ``images/`` and, when the scene has masks, ``masks/`` where nerfstudio's convention keeps pixels that
    are not 0: static pixels 255, dynamic pixels 0, so a static NeRF ignores the moving objects."""

    folder = "scene/nerfstudio"

    def write(self, result: RunResult, scene: Scene, folder: Path) -> list[Path]:
        rgb = result.frames.rgb()
        c2w = _np(scene.cam2world).astype(np.float64) @ _OPENCV_TO_OPENGL
        intrinsics = _np(scene.intrinsics).astype(np.float64)
        height, width = (int(n) for n in scene.depth.shape[1:])
        static = None if scene.masks is None else ~_dynamic(scene)
        written, frames = [], []
        for t in range(len(scene)):
            name = f"{t:04d}.png"  # nerfstudio sorts frames by file name: the index keeps frame order
            written.append(writers.write_png(folder / "images" / name, rgb[t]))
            k = intrinsics[t]
            # nerfstudio's pixel centres are at +0.5 (as COLMAP's): the same rays, see ColmapExporter
            frame = {
                "file_path": f"images/{name}",
                "transform_matrix": c2w[t].tolist(),
                "fl_x": float(k[0, 0]),
                "fl_y": float(k[1, 1]),
                "cx": float(k[0, 2]) + 0.5,
                "cy": float(k[1, 2]) + 0.5,
                "w": width,
                "h": height,
            }
            if static is not None:
                written.append(writers.write_png(folder / "masks" / name, static[t].astype(np.uint8) * 255))
                frame["mask_path"] = f"masks/{name}"
            frames.append(frame)
        path = folder / "transforms.json"
        path.write_text(json.dumps({"camera_model": "OPENCV", "frames": frames}, indent=2) + "\n")
        return [path, *written]


# --- rerun -----------------------------------------------------------------------------------------


def _import_rerun() -> ModuleType:
    """rerun-sdk is an optional extra: without it, one line saying how to install it."""
    try:
        import rerun
    except ImportError:
        raise Easi3RError("the rerun exporter needs rerun-sdk: pip install 'easi3r[rerun]'") from None
    return rerun


class RerunExporter(AlignedSceneExporter):
    """``scene/recording.rrd``, a rerun recording with a ``frame`` timeline: per frame the kept world
    points ``world/points/static`` and ``world/points/dynamic`` (the frame's colours), the camera
    ``world/camera`` (cam2world and pinhole intrinsics, OpenCV axes), and under it the RGB ``image`` and,
    when the scene has masks, the dynamic ``mask`` (0 static, 1 dynamic).

    ``max_points_per_frame``: at most this many points per frame (a fixed-seed draw over both clouds);
    ``min_conf``: keep pixels whose raw confidence exceeds it, as :class:`PointCloudExporter`.
    """

    def __init__(self, max_points_per_frame: int = 20_000, min_conf: float = REFERENCE_GLB_MIN_CONF) -> None:
        if max_points_per_frame < 1:
            raise ValueError(f"max_points_per_frame must be >= 1, got {max_points_per_frame}")
        # checked when the exporter is built, so a missing SDK fails before anything is written
        _import_rerun()
        self.max_points_per_frame = max_points_per_frame
        self.min_conf = min_conf

    def write(self, result: RunResult, scene: Scene, folder: Path) -> list[Path]:
        rr = _import_rerun()
        path = folder / "recording.rrd"
        rec = rr.RecordingStream("easi3r")
        # a file sink only: no viewer is spawned and no port is opened
        rec.save(path)
        points, rgb = _np(scene.pts3d), result.frames.rgb()
        kept, dynamic = _kept(scene, self.min_conf), _dynamic(scene)
        c2w = _np(scene.cam2world).astype(np.float64)
        intrinsics = _np(scene.intrinsics).astype(np.float64)
        height, width = (int(n) for n in scene.depth.shape[1:])
        rng = np.random.default_rng(0)
        if scene.masks is not None:
            labels = [(0, "static", (0, 0, 0, 0)), (1, "dynamic", (255, 0, 0, 160))]
            rec.log("world/camera/mask", rr.AnnotationContext(labels), static=True)
        for t in range(len(scene)):
            rec.set_time("frame", sequence=t)
            index = np.flatnonzero(kept[t])
            if len(index) > self.max_points_per_frame:
                index = np.sort(rng.choice(index, self.max_points_per_frame, replace=False))
            moving = dynamic[t].reshape(-1)[index]
            frame_points, frame_rgb = points[t].reshape(-1, 3)[index], rgb[t].reshape(-1, 3)[index]
            for name, select in (("static", ~moving), ("dynamic", moving)):
                rec.log(f"world/points/{name}", rr.Points3D(frame_points[select], colors=frame_rgb[select]))
            rec.log("world/camera", rr.Transform3D(translation=c2w[t, :3, 3], mat3x3=c2w[t, :3, :3]))
            rec.log("world/camera", rr.Pinhole(image_from_camera=intrinsics[t], resolution=[width, height]))
            rec.log("world/camera/image", rr.Image(rgb[t]))
            if scene.masks is not None:
                rec.log("world/camera/mask", rr.SegmentationImage(dynamic[t].astype(np.uint8)))
        # the file is complete only once the stream's buffered messages are written
        rec.flush()
        return [path]


# --- everything numeric ------------------------------------------------------------------------------


class SceneExporter(AlignedSceneExporter):
    """``scene/scene.safetensors``: cam2world, intrinsics, focals, depth, conf, pts3d, the frames' colours
    (``rgb``, what the viewer draws) and masks (when the scene has them), with the frame paths,
    ``conf_is_log`` and the camera convention as metadata."""

    def write(self, result: RunResult, scene: Scene, folder: Path) -> list[Path]:
        tensors = {
            "cam2world": scene.cam2world,
            "intrinsics": scene.intrinsics,
            "focals": scene.focals,
            "depth": scene.depth,
            "conf": scene.conf,
            "pts3d": scene.pts3d,
            "rgb": result.frames.rgb(),
        }
        if scene.masks is not None:
            tensors["masks"] = scene.masks.bool()
        metadata = {
            "frames": json.dumps(list(result.frames.paths)),
            "conf_is_log": json.dumps(bool(scene.conf_is_log)),
            "convention": "opencv camera-to-world",
        }
        return [writers.save_safetensors(folder / "scene.safetensors", tensors, metadata)]
