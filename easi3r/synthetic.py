"""Procedural dynamic scenes with exact ground truth, for testing alignment and masks without a network.

A closed, textured box room (four walls, floor and ceiling, each with its own colour pattern) holds K
moving rigid objects (spheres and boxes, textured in their own frame so the texture moves with them). A
pinhole camera follows a smooth trajectory ("orbit" around the room centre, or "forward" along the room).
Every frame is ray-cast at any size: RGB, z-depth, world points and dynamic masks (pixels that see a
moving object). :func:`pair_predictions` turns a scene into DUSt3R-style pair outputs, perfect or perturbed.

``texture`` sets how hard the frames are to match: "pattern" (checkerboards and bands on the walls, stripes
on the objects: every patch distinctive), "plain" (one flat colour per face and object: only edges and
colour boundaries to match), or "noise" (fine random cells everywhere, objects included: dense detail, and
objects that blend into the busy walls).

Conventions are those of :mod:`easi3r.geometry` (OpenCV cameras, camera-to-world poses, principal point at
(W/2, H/2)); the world's y axis points down, so the floor is at y = +``floor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from easi3r.geometry import Scene
from easi3r.types import PairPredictions

__all__ = ["TEXTURES", "MovingObject", "SyntheticScene", "make_scene", "pair_predictions"]

TEXTURES = ("pattern", "plain", "noise")

_ROOM_COLOURS = np.array(
    [  # one base colour per face: -x, +x, -y (ceiling), +y (floor), -z, +z
        [0.85, 0.35, 0.30],
        [0.30, 0.65, 0.85],
        [0.90, 0.90, 0.75],
        [0.55, 0.45, 0.30],
        [0.40, 0.80, 0.40],
        [0.80, 0.55, 0.85],
    ]
)


@dataclass
class MovingObject:
    """A rigid sphere or box whose centre moves on ``centre(t) = start + velocity·t + wobble·sin(2πt)`` and
    which spins about the vertical axis (t runs from 0 to 1 over the clip)."""

    kind: str  # "sphere" or "box"
    size: np.ndarray  # radius (1,) for a sphere, half extents (3,) for a box
    start: np.ndarray  # (3,)
    velocity: np.ndarray  # (3,) per clip
    wobble: np.ndarray  # (3,)
    spin: float  # radians per clip, about the world y axis
    colour: np.ndarray  # (3,)

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), centre (3,)) at clip time t ∈ [0, 1]."""
        centre = self.start + self.velocity * t + self.wobble * math.sin(2 * math.pi * t)
        return _rot_y(self.spin * t), centre


@dataclass
class SyntheticScene:
    """Ground truth of a rendered clip."""

    rgb: Tensor  # (T, H, W, 3) float32 in [0, 1]
    depth: Tensor  # (T, H, W) z-depth
    pts3d: Tensor  # (T, H, W, 3) world points
    masks: Tensor  # (T, H, W) bool, True = pixel sees a moving object
    cam2world: Tensor  # (T, 4, 4)
    intrinsics: Tensor  # (T, 3, 3)
    extent: float  # the room's largest side: the "scene size" that errors are relative to
    objects: list[MovingObject]

    def __len__(self) -> int:
        return self.depth.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    def images(self) -> Tensor:
        """(T, 3, H, W) network-style input in [-1, 1]."""
        return self.rgb.permute(0, 3, 1, 2) * 2 - 1

    def to_scene(self) -> Scene:
        """The ground truth as a :class:`~easi3r.geometry.Scene` (confidence 1 everywhere)."""
        return Scene(
            cam2world=self.cam2world,
            intrinsics=self.intrinsics,
            depth=self.depth,
            conf=torch.ones_like(self.depth),
            pts3d=self.pts3d,
            masks=self.masks,
        )


def make_scene(
    n_frames: int = 6,
    size: tuple[int, int] = (32, 48),
    n_objects: int = 2,
    motion: str = "orbit",
    fov_deg: float = 60.0,
    room: float = 8.0,
    seed: int = 0,
    texture: str = "pattern",
) -> SyntheticScene:
    """Render a clip of ``n_frames`` frames of ``size`` = (H, W).

    ``fov_deg`` is the horizontal field of view; ``room`` the side of the square room (height 0.5·room);
    ``motion`` is "orbit" (an arc of 70° around the centre, looking inwards) or "forward" (a walk along the
    room with a gentle sway). Objects alternate sphere / box, with trajectories drawn from ``seed``.
    ``texture`` is one of :data:`TEXTURES`; it changes colours only, never geometry, masks or poses.
    """
    if n_frames < 1 or min(size) < 1:
        raise ValueError(f"need at least one frame of at least 1×1 pixels, got {n_frames} × {size}")
    if motion not in ("orbit", "forward"):
        raise ValueError(f"motion must be 'orbit' or 'forward', got {motion!r}")
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {', '.join(TEXTURES)}, got {texture!r}")
    rng = np.random.default_rng(seed)
    height, width = size
    focal = width / 2 / math.tan(math.radians(fov_deg) / 2)
    intrinsics = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    half = room / 2
    room_lo = np.array([-half, -0.3 * room, -half])  # ceiling above the cameras (y down)
    room_hi = np.array([half, 0.2 * room, half])  # floor below them
    objects = [_random_object(k, rng, room) for k in range(n_objects)]
    times = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.zeros(1)
    poses = np.stack([_camera_pose(t, motion, room) for t in times])

    pix = np.stack(np.meshgrid(np.arange(width), np.arange(height), indexing="xy"), -1).astype(np.float64)
    rays_cam = np.concatenate(((pix - intrinsics[:2, 2]) / focal, np.ones((height, width, 1))), -1)

    rgb, depth, pts, masks = [], [], [], []
    for pose, t in zip(poses, times):
        origin = pose[:3, 3]
        # ray directions with unit z in the camera: the ray parameter is then the z-depth itself
        dirs = rays_cam.reshape(-1, 3) @ pose[:3, :3].T
        frame_rgb, frame_t, frame_dyn = _trace(origin, dirs, room_lo, room_hi, objects, t, texture)
        rgb.append(frame_rgb.reshape(height, width, 3))
        depth.append(frame_t.reshape(height, width))
        pts.append((origin + frame_t[:, None] * dirs).reshape(height, width, 3))
        masks.append(frame_dyn.reshape(height, width))

    def f32(x: list[np.ndarray] | np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(x, dtype=np.float32))

    return SyntheticScene(
        rgb=f32(rgb),
        depth=f32(depth),
        pts3d=f32(pts),
        masks=torch.from_numpy(np.asarray(masks, dtype=bool)),
        cam2world=f32(poses),
        intrinsics=f32(np.repeat(intrinsics[None], n_frames, 0)),
        extent=float(room),
        objects=objects,
    )


def pair_predictions(
    scene: SyntheticScene,
    pairs: Tensor,
    noise: float = 0.0,
    outlier_frac: float = 0.0,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> PairPredictions:
    """DUSt3R-style predictions for ordered ``pairs`` (P, 2): view 1's and view 2's points, both in view 1's
    camera frame, multiplied by one random per-pair scale (log-uniform in ``scale_range``), as a network
    that only knows shape up to scale would give them.

    ``noise`` is the std of Gaussian noise relative to depth, per coordinate; ``outlier_frac`` of the
    pixels of each map get a wrong depth (×[1/3, 3]) plus lateral jitter, keeping an ordinary confidence (the
    hard case). Confidences (≥ 1, as ``1 + exp``) fall with the frame gap and vary smoothly over the image,
    so the pair graph has a clear maximum spanning tree.
    """
    rng = np.random.default_rng(seed)
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    i, j = pairs[:, 0], pairs[:, 1]
    world2cam_i = torch.linalg.inv(scene.cam2world[i].double())
    scales = torch.from_numpy(np.exp(rng.uniform(*np.log(scale_range), size=len(pairs))))

    def to_view1(frames: Tensor) -> Tensor:
        pts = scene.pts3d[frames].double()
        cam = torch.einsum("pij,phwj->phwi", world2cam_i[:, :3, :3], pts) + world2cam_i[:, None, None, :3, 3]
        return cam * scales[:, None, None, None]

    pts1, pts2 = to_view1(i), to_view1(j)
    if noise > 0 or outlier_frac > 0:
        pts1, pts2 = (_perturb(p, noise, outlier_frac, rng) for p in (pts1, pts2))

    h, w = scene.size
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    pattern = torch.from_numpy(0.75 + 0.25 * np.cos(3 * xx + 2 * yy))  # smooth, in [0.5, 1]
    gap = (i - j).abs().double()
    level = 4.0 * torch.exp(-0.15 * gap)[:, None, None]
    conf1 = 1 + level * pattern
    conf2 = 1 + 0.9 * level * pattern.flip(-1)
    return PairPredictions(pts1.float(), conf1.float(), pts2.float(), conf2.float())


# --- internals ---------------------------------------------------------------------------------------


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose at ``position`` looking at ``target`` with image y towards world +y (down)."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack((x, y, z), axis=1)
    pose[:3, 3] = position
    return pose


def _camera_pose(t: float, motion: str, room: float) -> np.ndarray:
    if motion == "orbit":
        angle = math.radians(-35 + 70 * t)
        radius = 0.3 * room
        position = np.array(
            [radius * math.sin(angle), -0.02 * room * math.sin(math.pi * t), -radius * math.cos(angle)]
        )
        target = np.array([0.05 * room * math.sin(2 * math.pi * t), 0.03 * room, 0.0])
    else:
        position = np.array([0.06 * room * math.sin(math.pi * t), 0.0, -0.45 * room + 0.2 * room * t])
        target = position + np.array([0.3 * math.sin(2 * math.pi * t), 0.1, 1.0])
    return _look_at(position, target)


def _random_object(index: int, rng: np.random.Generator, room: float) -> MovingObject:
    kind = "sphere" if index % 2 == 0 else "box"
    scale = room / 8
    size = (
        np.array([rng.uniform(0.25, 0.45)]) * scale if kind == "sphere" else rng.uniform(0.2, 0.4, 3) * scale
    )
    start = np.array([rng.uniform(-1.2, 1.2), rng.uniform(0.0, 0.6), rng.uniform(-0.5, 1.5)]) * scale
    velocity = np.array([rng.uniform(-1, 1), 0.0, rng.uniform(-0.6, 0.6)]) * scale
    wobble = np.array([0.0, rng.uniform(-0.2, 0.2), 0.0]) * scale
    colour = rng.uniform(0.2, 1.0, 3)
    return MovingObject(kind, size, start, velocity, wobble, float(rng.uniform(-2, 2)), colour)


def _room_texture(face: np.ndarray, hit: np.ndarray, room: float, texture: str) -> np.ndarray:
    """Per-face colour times a shade; "pattern" (a checkerboard and diagonal bands) makes every wall
    patch distinctive."""
    u = hit[:, [1, 1, 0, 0, 0, 0]][np.arange(len(face)), face]  # an in-plane coordinate per face
    v = hit[:, [2, 2, 2, 2, 1, 1]][np.arange(len(face)), face]
    if texture == "plain":
        shade = np.full(len(face), 0.8)
    elif texture == "noise":
        cell = room / 40
        shade = 0.35 + 0.65 * _cell_noise(np.floor(u / cell), np.floor(v / cell), face)
    else:
        cell = room / 10
        checker = (np.floor(u / cell) + np.floor(v / cell)) % 2
        bands = 0.5 + 0.5 * np.sin(2.3 * u + 1.7 * v + face)
        shade = 0.45 + 0.35 * checker + 0.2 * bands
    return _ROOM_COLOURS[face] * shade[:, None]


def _object_texture(obj: MovingObject, local: np.ndarray, texture: str) -> np.ndarray:
    """The object's colour times a shade in its own frame, so the texture moves with it."""
    if texture == "plain":
        return np.broadcast_to(obj.colour, local.shape).copy()
    if texture == "noise":
        # cells about as fine as the walls' on screen, so that the object blends into them
        cells = np.floor(local / (obj.size.max() / 5))
        return obj.colour * (0.35 + 0.65 * _cell_noise(*cells.T))[:, None]
    stripes = 0.6 + 0.4 * np.sign(np.sin(8 * local[:, 0] / obj.size.max() + 3 * local[:, 1]))
    return obj.colour * stripes[:, None]


def _cell_noise(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """A value in [0, 1] per integer cell (a, b, c), by an integer hash: the same on every machine, and
    drawing nothing from the scene's random generator (so textures never change the geometry)."""
    keys = [np.asarray(x).astype(np.int64).astype(np.uint64) for x in (a, b, c)]
    h = keys[0] * np.uint64(73856093) ^ keys[1] * np.uint64(19349663) ^ keys[2] * np.uint64(83492791)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h & np.uint64(0xFFFF)).astype(np.float64) / 0xFFFF


def _trace(
    origin: np.ndarray,
    dirs: np.ndarray,
    room_lo: np.ndarray,
    room_hi: np.ndarray,
    objects: list[MovingObject],
    t: float,
    texture: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit along each ray (origin + s·dir, s > 0): colour, s, and whether it is a moving object."""
    # the room is seen from inside: each ray leaves through the nearest of the three faces it heads to
    with np.errstate(divide="ignore"):
        bound = np.where(dirs > 0, room_hi, room_lo)
        exit_s = np.where(dirs != 0, (bound - origin) / dirs, np.inf)
    axis = exit_s.argmin(1)
    best = exit_s[np.arange(len(dirs)), axis]
    face = 2 * axis + (dirs[np.arange(len(dirs)), axis] > 0)
    colour = _room_texture(face, origin + best[:, None] * dirs, room_hi[0] - room_lo[0], texture)
    dynamic = np.zeros(len(dirs), dtype=bool)
    for obj in objects:
        rot, centre = obj.pose(t)
        # intersect in the object's own frame, where a box is axis-aligned
        o_local = (origin - centre) @ rot
        d_local = dirs @ rot
        s = (
            _sphere_hit(o_local, d_local, obj.size[0])
            if obj.kind == "sphere"
            else _box_hit(o_local, d_local, obj.size)
        )
        closer = s < best
        best = np.where(closer, s, best)
        colour[closer] = _object_texture(obj, o_local + s[closer, None] * d_local[closer], texture)
        dynamic |= closer
    return np.clip(colour, 0, 1), best, dynamic


def _sphere_hit(o: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    a = (d * d).sum(1)
    b = 2 * (d @ o)
    c = o @ o - radius**2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0))
    s = (-b - root) / (2 * a)
    return np.where((disc >= 0) & (s > 0), s, np.inf)


def _box_hit(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        s1 = (-half - o) / d
        s2 = (half - o) / d
    near = np.nanmax(np.minimum(s1, s2), axis=1)
    far = np.nanmin(np.maximum(s1, s2), axis=1)
    return np.where((near <= far) & (near > 0), near, np.inf)


def _perturb(pts: Tensor, noise: float, outlier_frac: float, rng: np.random.Generator) -> Tensor:
    z = pts[..., 2:3].abs()
    gauss = torch.from_numpy(rng.standard_normal(pts.shape))
    out = pts + noise * z * gauss
    if outlier_frac > 0:
        bad = torch.from_numpy(rng.random(pts.shape[:-1]) < outlier_frac)
        factor = torch.from_numpy(np.exp(rng.uniform(-math.log(3), math.log(3), pts.shape[:-1])))
        jitter = 0.2 * z * torch.from_numpy(rng.standard_normal(pts.shape))
        wrong = pts * factor[..., None] + jitter
        out = torch.where(bad[..., None], wrong, out)
    return out
