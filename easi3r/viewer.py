"""A 4D viewer for a finished run: ``easi3r view OUT_DIR`` serves ``scene/scene.safetensors`` in the browser.

The page (made by viser, the optional dependency ``easi3r[view]``) shows

* the static points of every frame at once, fused into one cloud (static = not in the dynamic mask);
* the dynamic points of the current frame only, so a moving object is seen moving rather than smeared;
* a camera frustum for every frame, and the current one highlighted with its frame inside.

Only :func:`serve` imports viser, so ``import easi3r`` (and every other command) works without it.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from easi3r.errors import Easi3RError
from easi3r.outputs import REFERENCE_GLB_MIN_CONF

__all__ = ["SCENE_FILE", "FramePoints", "ViewerData", "load_scene_for_viewing", "select_points", "serve"]

SCENE_FILE = Path("scene") / "scene.safetensors"
MASK_COLOR = (255, 0, 64)  # the colour of ``overlays/``, so the viewer and the pictures agree
MASK_ALPHA = 0.5
HIGHLIGHT_COLOR = (255, 160, 0)  # current frame's frustum: distinct from both the mask tint and grey
CAMERA_COLOR = (110, 110, 110)
GREY = 160  # colour of every point when the file stores no RGB


@dataclass
class ViewerData:
    """What the viewer shows, as numpy arrays, one entry per frame."""

    frames: list[str]  # frame paths, in frame order
    cam2world: np.ndarray  # (T, 4, 4) float64, OpenCV camera-to-world
    intrinsics: np.ndarray  # (T, 3, 3) float64
    pts3d: np.ndarray  # (T, H, W, 3) float32 world points
    conf: np.ndarray  # (T, H, W) float32, raw confidence 1 + exp(x)
    masks: np.ndarray  # (T, H, W) bool, True = dynamic (all False when the run derived no masks)
    rgb: np.ndarray  # (T, H, W, 3) uint8 (grey when the file stores no colours)

    def __len__(self) -> int:
        return self.pts3d.shape[0]


def load_scene_for_viewing(out_dir: str | Path) -> ViewerData:
    """Read ``OUT_DIR/scene/scene.safetensors`` (see docs/outputs.md) and check every array's shape.

    Raises :class:`Easi3RError` with one line when the folder has no scene or the file is incomplete, so
    the CLI can say what to do instead of showing a traceback.
    """
    path = Path(out_dir) / SCENE_FILE
    if not path.is_file():
        raise Easi3RError(
            f"{out_dir} has no {SCENE_FILE.as_posix()}: run with an aligner, e.g. align.name=global"
        )
    arrays, metadata = _read_scene_file(path)
    _check_scene_shapes(path, arrays)
    pts3d = arrays["pts3d"]
    t, h, w = pts3d.shape[:3]
    conf = arrays["conf"].astype(np.float32)
    # --min-conf is in the unit of the network's raw confidence; a file that stores its log says so
    if metadata.get("conf_is_log", "false").lower() == "true":
        conf = np.exp(conf)
    frames = json.loads(metadata["frames"]) if "frames" in metadata else [f"frame {i}" for i in range(t)]
    rgb = arrays.get("rgb")
    if rgb is None:
        rgb = np.full((t, h, w, 3), GREY, np.uint8)
    elif rgb.dtype != np.uint8:  # float colours in [0, 1]
        rgb = np.round(np.clip(rgb.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    masks = arrays.get("masks")
    return ViewerData(
        frames=[str(frame) for frame in frames],
        cam2world=arrays["cam2world"].astype(np.float64),
        intrinsics=arrays["intrinsics"].astype(np.float64),
        pts3d=pts3d.astype(np.float32),
        conf=conf,
        masks=np.zeros((t, h, w), bool) if masks is None else masks.astype(bool),
        rgb=rgb,
    )


def _read_scene_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All arrays and the metadata of a scene file; one line when it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            arrays = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise Easi3RError(f"{path} cannot be read: {exc}") from exc
    return arrays, metadata


def _check_scene_shapes(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The required arrays are there, and every array's shape matches pts3d's (T, H, W, 3)."""
    missing = [key for key in ("cam2world", "intrinsics", "pts3d", "conf") if key not in arrays]
    if missing:
        raise Easi3RError(f"{path} is incomplete: no {', '.join(missing)}")
    pts3d = arrays["pts3d"]
    if pts3d.ndim != 4 or pts3d.shape[-1] != 3 or pts3d.shape[0] == 0:
        raise Easi3RError(f"{path}: pts3d must be (T, H, W, 3) with T >= 1, got {pts3d.shape}")
    t, h, w = pts3d.shape[:3]
    expected = {"cam2world": (t, 4, 4), "intrinsics": (t, 3, 3), "conf": (t, h, w)}
    expected |= {key: shape for key, shape in (("masks", (t, h, w)), ("rgb", (t, h, w, 3))) if key in arrays}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise Easi3RError(f"{path}: {key} must be {shape} to match pts3d, got {arrays[key].shape}")


def tint(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours with the mask colour blended in, as the overlay pictures draw the mask."""
    blend = (1 - MASK_ALPHA) * colors.astype(np.float32) + MASK_ALPHA * np.asarray(MASK_COLOR, np.float32)
    return np.round(blend).astype(np.uint8)


@dataclass
class FramePoints:
    """The points one frame contributes: flat pixel indices into its (H·W) grid."""

    static: np.ndarray  # (Ns,) int64
    dynamic: np.ndarray  # (Nd,) int64


def select_points(data: ViewerData, max_points_per_frame: int, min_conf: float) -> list[FramePoints]:
    """Per frame, the finite points with ``conf > min_conf`` (as the point-cloud exporters keep), split into static and dynamic and each
    subsampled to at most ``max_points_per_frame`` (evenly at random, with a fixed seed, so the same run
    always shows the same points and a browser is never sent millions of them)."""
    t = len(data)
    pts = data.pts3d.reshape(t, -1, 3)
    keep = np.isfinite(pts).all(-1) & (data.conf.reshape(t, -1) > min_conf)
    dynamic = data.masks.reshape(t, -1)
    rng = np.random.default_rng(0)

    def subsample(index: np.ndarray) -> np.ndarray:
        if len(index) <= max_points_per_frame:
            return index
        return np.sort(rng.choice(index, max_points_per_frame, replace=False))

    return [
        FramePoints(
            static=subsample(np.flatnonzero(keep[i] & ~dynamic[i])),
            dynamic=subsample(np.flatnonzero(keep[i] & dynamic[i])),
        )
        for i in range(t)
    ]


def scene_extent(data: ViewerData, points: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, radius) of the scene: the median of the points and cameras, and the 90th percentile of
    their distances to it. Percentiles, not the bounding box, so a few stray far points do not shrink the
    cameras and points to dots; sizes of frusta and points are fractions of this radius."""
    everything = np.concatenate((points.reshape(-1, 3), data.cam2world[:, :3, 3]))
    centre = np.median(everything, axis=0)
    radius = float(np.percentile(np.linalg.norm(everything - centre, axis=1), 90))
    return centre, radius if radius > 0 else 1.0


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, an address :func:`serve` cannot serve on.

    viser binds in a background thread, so a host this machine cannot serve on would leave the command
    waiting forever: the host is tried first, on any port (viser moves on from a busy port by itself).
    """
    if not 1 <= port <= 65535:
        raise Easi3RError(f"--port must be a TCP port from 1 to 65535, got {port}")
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM):
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)
    except OSError as exc:
        raise Easi3RError(f"--host {host}: cannot serve on this address ({exc.strerror or exc})") from None


def serve(
    data: ViewerData,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_points_per_frame: int = 20_000,
    min_conf: float | None = None,
    fps: float = 10.0,
) -> None:
    """Serve ``data`` on ``http://host:port`` until Ctrl-C.

    ``min_conf`` (raw confidence) defaults to the point-cloud exporters' threshold, so the viewer shows the
    points of the ``scene/points/`` clouds. viser takes the next free port when ``port`` is taken, so the
    URL printed is the one actually served.
    """
    try:
        import viser
        import viser.transforms as vtf
    except ImportError as exc:
        raise Easi3RError("the viewer needs viser: pip install 'easi3r[view]'") from exc
    from easi3r.writers import overlay

    if min_conf is None:
        min_conf = REFERENCE_GLB_MIN_CONF

    t, h, w = data.conf.shape
    selected = select_points(data, max_points_per_frame, min_conf)
    flat_pts = data.pts3d.reshape(t, -1, 3)
    flat_rgb = data.rgb.reshape(t, -1, 3)
    static_pts = np.concatenate([flat_pts[i, sel.static] for i, sel in enumerate(selected)])
    static_rgb = np.concatenate([flat_rgb[i, sel.static] for i, sel in enumerate(selected)])
    centre, radius = scene_extent(data, static_pts)

    server = viser.ViserServer(host=host, port=port, verbose=False)
    # the world is the first camera's OpenCV frame (y down), so "up" for orbiting is -y
    server.scene.set_up_direction("-y")
    first = data.cam2world[0]
    server.initial_camera.look_at = centre
    server.initial_camera.position = first[:3, 3] - radius * (0.6 * first[:3, 2] + 0.3 * first[:3, 1])
    # clipping planes in the scene's unit: the fixed defaults (0.01, 1000) hide scenes that are not unit-sized
    server.initial_camera.near = 1e-3 * radius
    server.initial_camera.far = 1e3 * radius

    point_size = 0.006 * radius
    # flat: a point keeps exactly its pixel's colour; float32: viser's default float16 keeps only ~3
    # significant digits of a coordinate and overflows past 65504, which unnormalised scenes reach
    cloud_style: dict[str, Any] = {"point_size": point_size, "point_shading": "flat", "precision": "float32"}
    static_cloud = server.scene.add_point_cloud("/static", static_pts, static_rgb, **cloud_style)
    frame_nodes: list[list[Any]] = []  # per frame, the nodes visible only while it is the current frame
    dynamic_clouds: dict[int, Any] = {}
    current_frustums: list[Any] = []
    all_frustums: list[Any] = []
    for i in range(t):
        k = data.intrinsics[i]
        fov = 2 * math.atan(h / 2 / k[1, 1])  # viser wants the vertical field of view
        wxyz = vtf.SO3.from_matrix(data.cam2world[i, :3, :3]).wxyz
        position = data.cam2world[i, :3, 3]
        common = {"fov": fov, "aspect": w / h, "scale": 0.08 * radius, "wxyz": wxyz, "position": position}
        all_frustums.append(
            server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", color=CAMERA_COLOR, thickness=0.002 * radius, **common
            )
        )
        frustum = server.scene.add_camera_frustum(
            f"/current/{i:04d}/camera",
            color=HIGHLIGHT_COLOR,
            thickness=0.005 * radius,
            image=overlay(data.rgb[i], data.masks[i], MASK_COLOR, MASK_ALPHA),
            visible=False,
            **common,
        )
        current_frustums.append(frustum)
        nodes = [frustum]
        index = selected[i].dynamic
        if len(index):
            cloud = server.scene.add_point_cloud(
                f"/current/{i:04d}/dynamic",
                flat_pts[i, index],
                tint(flat_rgb[i, index]),
                visible=False,
                **cloud_style,
            )
            dynamic_clouds[i] = cloud
            nodes.append(cloud)
        frame_nodes.append(nodes)

    with server.gui.add_folder("Time"):
        slider = server.gui.add_slider("Frame", min=0, max=t - 1, step=1, initial_value=0)
        play = server.gui.add_button("Play", icon=viser.Icon.PLAYER_PLAY)
        speed = server.gui.add_slider("FPS", min=1, max=30, step=1, initial_value=int(fps))
        name = server.gui.add_text("File", initial_value=data.frames[0], disabled=True)
    with server.gui.add_folder("Display"):
        show_mask = server.gui.add_checkbox(
            "Mask overlay", True, hint="tint the dynamic points and the frame's mask in the mask colour"
        )
        show_static = server.gui.add_checkbox("Static points", True)
        show_cameras = server.gui.add_checkbox("All cameras", True)
        # relative to the default, because the world's unit (hence a good absolute size) differs per run
        size = server.gui.add_slider("Point size", min=0.25, max=4.0, step=0.25, initial_value=1.0)

    # GUI callbacks run on viser's thread pool while the play loop runs on this thread: one lock keeps a
    # frame change atomic, so two frames are never shown at once
    lock = threading.Lock()
    shown = [0]
    playing = threading.Event()

    def show_frame(index: int) -> None:
        with lock:
            for node in frame_nodes[shown[0]]:
                node.visible = False
            for node in frame_nodes[index]:
                node.visible = True
            shown[0] = index
            name.value = data.frames[index]

    show_frame(0)
    slider.on_update(lambda _: show_frame(int(slider.value)))

    @play.on_click
    def _(_) -> None:
        if playing.is_set():
            playing.clear()
            play.label, play.icon = "Play", viser.Icon.PLAYER_PLAY
        else:
            playing.set()
            play.label, play.icon = "Pause", viser.Icon.PLAYER_PAUSE

    @show_mask.on_update
    def _(_) -> None:
        # re-sends every frame's colours and image once per toggle: cheaper than keeping both versions
        with lock:
            for i, cloud in dynamic_clouds.items():
                colors = flat_rgb[i, selected[i].dynamic]
                cloud.colors = tint(colors) if show_mask.value else colors
            for i, frustum in enumerate(current_frustums):
                mask = data.masks[i] if show_mask.value else np.zeros((h, w), bool)
                frustum.image = overlay(data.rgb[i], mask, MASK_COLOR, MASK_ALPHA)

    show_static.on_update(lambda _: setattr(static_cloud, "visible", show_static.value))

    @show_cameras.on_update
    def _(_) -> None:
        for frustum in all_frustums:
            frustum.visible = show_cameras.value

    @size.on_update
    def _(_) -> None:
        static_cloud.point_size = size.value * point_size
        for cloud in dynamic_clouds.values():
            cloud.point_size = size.value * point_size

    if not len(static_pts) and not dynamic_clouds:
        print(
            f"easi3r: warning: no point has a confidence of at least {min_conf} (--min-conf)", file=sys.stderr
        )
    shown_host = "localhost" if host in ("0.0.0.0", "::", "") else host
    print(
        f"easi3r: viewing {t} frames, {len(static_pts)} static points at "
        f"http://{shown_host}:{server.get_port()} (Ctrl-C to stop)",
        flush=True,
    )
    try:
        while True:
            if playing.is_set():
                slider.value = (int(slider.value) + 1) % t  # fires show_frame through the callback
            time.sleep(1 / speed.value)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
