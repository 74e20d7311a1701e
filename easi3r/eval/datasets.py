"""Readers for the benchmark datasets, in the folder layouts their preparation scripts leave behind.

Each reader lists the sequences under a dataset root and loads one sequence at a time into a
:class:`Sequence`: the frame files (already subsampled by the preparation, so every listed frame is run),
and whatever ground truth the dataset has. Loading is per sequence so that one broken sequence (a
missing pose file, a frame without its mask) fails alone when the runner evaluates the others.

Layouts (``<root>`` is what ``--root`` names; the strides are those the reference evaluates):

=========  =======================================================================================
davis      ``<root>/JPEGImages/480p/<seq>/*.jpg`` and ``<root>/Annotations/480p/<seq>/*.png``
           (``<root>`` is the extracted ``DAVIS`` folder). Every annotated sequence; ``davis16`` and
           ``davis17`` are the DAVIS-2016 (20) and DAVIS-2017 (30) validation lists.
tum        ``<root>/<seq>/rgb_all_stride30/*.png``, ``<root>/<seq>/groundtruth_all_stride30.txt``
           and optionally ``<root>/<seq>/depth_all_stride30/*.png`` (rgb associated with the ground
           truth within 0.02 s, then every 30th frame, as the reference's ``prepare_tum.py`` writes).
dycheck    ``<root>/<seq>/prepare_all_stride10/{rgb/*.png, camera/*.json, masks/*.png,
           depth_npy/*.npy}`` (Shape-of-Motion iPhone data, every 10th frame); run uncropped.
adt        ``<root>/<seq>/prepare_all_stride5/{rgb/*.png, camera/*.json}`` (every 5th frame).
sintel     ``<root>/final/<seq>/frame_*.png``, ``<root>/camdata_left/<seq>/frame_*.cam`` and
           optionally ``<root>/depth/<seq>/frame_*.dpt`` (``<root>`` = ``MPI-Sintel/training``);
           MonST3R's 14-sequence pose split.
bonn       ``<root>/rgbd_bonn_<seq>/{rgb_110/*.png, groundtruth_110.txt, depth_110/*.png}``
           (frames 30–139 of each sequence, as MonST3R's ``prepare_bonn.py`` cuts them); MonST3R's
           5 sequences; run uncropped like MonST3R's video-depth protocol.
synthetic  ``<root>/<seq>/{rgb/*.png, masks/*.png, depth/*.npy, poses.txt, intrinsics.txt}``, as
           ``easi3r synth`` writes it (:mod:`easi3r.synth`): every ground truth, exact.
=========  =======================================================================================

Ground-truth conventions: poses are camera-to-world ``(T, 4, 4)`` float64 (the ``w2c`` of the JSON
and ``.cam`` files is inverted); masks are PNG files whose non-zero pixels are foreground (all DAVIS
objects merged into one); depth files are decoded by :func:`read_depth`; intrinsics are ``(T, 3, 3)``
at the resolution of the dataset files.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from easi3r.errors import Easi3RError
from easi3r.eval.metrics import read_tum

__all__ = [
    "DATASETS",
    "DAVIS16_VAL",
    "DAVIS17_VAL",
    "DatasetReader",
    "Sequence",
    "read_depth",
    "read_mask",
    "read_sintel_cam",
]

# Validation lists of the DAVIS challenges (ImageSets/2016/val.txt and ImageSets/2017/val.txt).
DAVIS16_VAL = (
    "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout", "car-shadow", "cows",
    "dance-twirl", "dog", "drift-chicane", "drift-straight", "goat", "horsejump-high", "kite-surf",
    "libby", "motocross-jump", "paragliding-launch", "parkour", "scooter-black", "soapbox",
)  # fmt: skip
DAVIS17_VAL = (
    "bike-packing", "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout", "car-shadow",
    "cows", "dance-twirl", "dog", "dogs-jump", "drift-chicane", "drift-straight", "goat", "gold-fish",
    "horsejump-high", "india", "judo", "kite-surf", "lab-coat", "libby", "loading", "mbike-trick",
    "motocross-jump", "paragliding-launch", "parkour", "pigs", "scooter-black", "shooting", "soapbox",
)  # fmt: skip
# MonST3R's camera-pose split of Sintel (eval_metadata.py, training set, final pass).
SINTEL_POSE = (
    "alley_2", "ambush_4", "ambush_5", "ambush_6", "cave_2", "cave_4", "market_2", "market_5",
    "market_6", "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3",
)  # fmt: skip
# MonST3R's Bonn subset (the sequences of its video-depth evaluation, after DepthCrafter).
BONN_SEQUENCES = ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")

# Sintel's binary .cam/.dpt files start with this float32 tag (the Sintel SDK's TAG_FLOAT).
_SINTEL_TAG = 202021.25
# TUM-RGBD and Bonn store depth as 16-bit PNG in units of 1/5000 m.
_PNG_DEPTH_SCALE = 5000.0
# MonST3R's video-depth evaluation ignores ground truth beyond 70 m on Sintel and Bonn.
_MONST3R_MAX_DEPTH = 70.0


@dataclass
class Sequence:
    """One benchmark sequence: the frames to run and the ground truth that exists for them.

    ``run_overrides`` are recipe overrides the protocol needs (``frames.crop=false`` for DyCheck); the
    runner puts the user's overrides after them, so a user can still change them. ``depth_max``
    excludes ground-truth depth at or beyond it from the depth metrics (None: no limit).
    """

    name: str
    frames: list[Path]
    gt_masks: list[Path] | None = None
    gt_poses: NDArray[np.float64] | None = None  # (T, 4, 4) camera-to-world
    gt_depth: list[Path] | None = None
    gt_intrinsics: NDArray[np.float64] | None = None  # (T, 3, 3)
    run_overrides: list[str] = field(default_factory=list)
    depth_max: float | None = None


class DatasetReader(ABC):
    """Lists and loads the sequences of one dataset layout (subclasses fill in the layout)."""

    label = ""  # the dataset's name in messages
    layout = ""  # the expected layout, shown whenever the root does not match it
    default_sequences: tuple[str, ...] | None = None  # the standard split; None = every sequence found

    @abstractmethod
    def available(self, root: Path) -> list[str]:
        """Names of every sequence under ``root``, sorted; raises when ``root`` lacks the layout."""

    @abstractmethod
    def load(self, root: Path, name: str) -> Sequence:
        """The frames and ground truth of sequence ``name``."""

    def sequence_names(
        self, root: str | os.PathLike[str], sequences: SequenceOf[str] | None = None
    ) -> list[str]:
        """The sequences to evaluate: ``sequences`` if given (``["all"]``: every one found), else the
        standard split. Every name must exist under ``root``."""
        found = self.available(Path(root))
        if sequences is None:
            wanted = list(self.default_sequences) if self.default_sequences is not None else found
        elif list(sequences) == ["all"]:
            wanted = found
        else:
            wanted = list(dict.fromkeys(sequences))  # keep the user's order, drop repeats
        missing = [name for name in wanted if name not in found]
        if missing:
            shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
            raise Easi3RError(
                f"{self.label} root {root} has no sequence {', '.join(missing)} "
                f"(found {len(found)}: {shown or 'none'}); expected {self.layout}"
            )
        return wanted

    def __call__(
        self, root: str | os.PathLike[str], sequences: SequenceOf[str] | None = None
    ) -> Iterator[Sequence]:
        """Yield the selected sequences one by one (each loaded only when reached)."""
        for name in self.sequence_names(root, sequences):
            yield self.load(Path(root), name)

    # --- helpers shared by the layouts ---------------------------------------------------------------

    def _root_folder(self, root: Path, sub: str) -> Path:
        if not root.is_dir():
            raise Easi3RError(f"{self.label} root {root} is not a folder: expected {self.layout}")
        folder = root / sub
        if not folder.is_dir():
            raise Easi3RError(f"{self.label} root {root} has no {sub}: expected {self.layout}")
        return folder

    def _subfolders_with(self, root: Path, marker: str, prefix: str = "") -> list[str]:
        """Sequence folders of ``root`` (named ``<prefix><seq>``) that contain ``marker``; none is an error."""
        if not root.is_dir():
            raise Easi3RError(f"{self.label} root {root} is not a folder: expected {self.layout}")
        names = sorted(
            entry.name[len(prefix) :]
            for entry in root.iterdir()
            if entry.name.startswith(prefix) and (entry / marker).exists()
        )
        if not names:
            raise Easi3RError(
                f"{self.label} root {root} has no {prefix}<sequence>/{marker}: expected {self.layout}"
            )
        return names

    def _files(self, folder: Path, suffix: str, name: str) -> list[Path]:
        """Sorted non-hidden ``*<suffix>`` files of ``folder``; a missing or empty folder is an error."""
        if not folder.is_dir():
            raise Easi3RError(f"{self.label} sequence {name}: missing folder {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix == suffix and not p.name.startswith("."))
        if not files:
            raise Easi3RError(f"{self.label} sequence {name}: no *{suffix} files in {folder}")
        return files

    def _same_count(self, name: str, frames: list[Path], other: SequenceOf, what: str) -> None:
        if len(other) != len(frames):
            raise Easi3RError(f"{self.label} sequence {name}: {len(frames)} frames but {len(other)} {what}")

    def _optional_files(self, folder: Path, suffix: str, name: str, frames: list[Path]) -> list[Path] | None:
        """The ground-truth files of an optional folder, one per frame; None when the folder is absent."""
        if not folder.is_dir():
            return None
        files = self._files(folder, suffix, name)
        self._same_count(name, frames, files, f"{folder.name}/*{suffix} files")
        return files


class DavisReader(DatasetReader):
    """DAVIS 2016/2017 at 480p: masks only (no camera ground truth)."""

    label = "DAVIS"
    layout = "<root>/JPEGImages/480p/<sequence>/*.jpg and <root>/Annotations/480p/<sequence>/*.png"

    def __init__(self, default_sequences: tuple[str, ...] | None = None) -> None:
        self.default_sequences = default_sequences

    def available(self, root: Path) -> list[str]:
        images = self._root_folder(root, "JPEGImages/480p")
        annotations = self._root_folder(root, "Annotations/480p")
        # The reference evaluates the annotated sequences; a sequence needs its frames as well.
        return sorted(p.name for p in annotations.iterdir() if p.is_dir() and (images / p.name).is_dir())

    def load(self, root: Path, name: str) -> Sequence:
        frames = self._files(root / "JPEGImages/480p" / name, ".jpg", name)
        masks = self._files(root / "Annotations/480p" / name, ".png", name)
        if [p.stem for p in frames] != [p.stem for p in masks]:
            raise Easi3RError(
                f"DAVIS sequence {name}: frame names do not match annotation names "
                f"({len(frames)} .jpg, {len(masks)} .png)"
            )
        return Sequence(name=name, frames=frames, gt_masks=masks)


class TumReader(DatasetReader):
    """TUM RGB-D dynamic sequences, as prepared by the reference (every 30th associated frame)."""

    label = "TUM"
    layout = (
        "<root>/<sequence>/rgb_all_stride30/*.png and <root>/<sequence>/groundtruth_all_stride30.txt "
        "('t tx ty tz qx qy qz qw' per frame), optional <root>/<sequence>/depth_all_stride30/*.png"
    )

    def available(self, root: Path) -> list[str]:
        return self._subfolders_with(root, "rgb_all_stride30")

    def load(self, root: Path, name: str) -> Sequence:
        folder = root / name
        frames = self._files(folder / "rgb_all_stride30", ".png", name)
        _, poses = read_tum(folder / "groundtruth_all_stride30.txt")
        self._same_count(name, frames, poses, "ground-truth poses")
        depth = self._optional_files(folder / "depth_all_stride30", ".png", name, frames)
        return Sequence(name=name, frames=frames, gt_poses=poses, gt_depth=depth)


class _CameraJsonReader(DatasetReader):
    """Layouts with one ``camera/<frame>.json`` (``{"w2c": 4×4, "K": 3×3}``) per frame."""

    prepared = ""  # the prepared sub-folder of each sequence

    def available(self, root: Path) -> list[str]:
        return self._subfolders_with(root, f"{self.prepared}/rgb")

    def _frames_and_cameras(
        self, root: Path, name: str
    ) -> tuple[Path, list[Path], NDArray[np.float64], NDArray[np.float64]]:
        folder = root / name / self.prepared
        frames = self._files(folder / "rgb", ".png", name)
        cameras = self._files(folder / "camera", ".json", name)
        if [p.stem for p in cameras] != [p.stem for p in frames]:
            raise Easi3RError(
                f"{self.label} sequence {name}: camera/*.json names do not match rgb/*.png names "
                f"({len(cameras)} cameras, {len(frames)} frames)"
            )
        w2c, intrinsics = zip(*(_read_camera_json(path) for path in cameras))
        return folder, frames, np.linalg.inv(np.stack(w2c)), np.stack(intrinsics)


class DyCheckReader(_CameraJsonReader):
    """DyCheck iPhone (Shape-of-Motion preprocessing), every 10th frame, run without the centre crop."""

    label = "DyCheck"
    prepared = "prepare_all_stride10"
    layout = (
        "<root>/<sequence>/prepare_all_stride10/rgb/*.png, camera/*.json ({'w2c', 'K'}), "
        "masks/*.png and optional depth_npy/*.npy"
    )

    def load(self, root: Path, name: str) -> Sequence:
        folder, frames, poses, intrinsics = self._frames_and_cameras(root, name)
        masks = self._optional_files(folder / "masks", ".png", name, frames)
        depth = self._optional_files(folder / "depth_npy", ".npy", name, frames)
        return Sequence(
            name=name,
            frames=frames,
            gt_masks=masks,
            gt_poses=poses,
            gt_depth=depth,
            gt_intrinsics=intrinsics,
            run_overrides=["frames.crop=false"],  # the reference's --no_crop for this dataset
        )


class AdtReader(_CameraJsonReader):
    """Aria Digital Twin (TAPVid-3D subset), every 5th frame: poses only."""

    label = "ADT"
    prepared = "prepare_all_stride5"
    layout = "<root>/<sequence>/prepare_all_stride5/rgb/*.png and camera/*.json ({'w2c', 'K'})"

    def load(self, root: Path, name: str) -> Sequence:
        _, frames, poses, intrinsics = self._frames_and_cameras(root, name)
        return Sequence(name=name, frames=frames, gt_poses=poses, gt_intrinsics=intrinsics)


class SintelReader(DatasetReader):
    """MPI Sintel training set, final pass; cameras from ``camdata_left``, depth from ``depth``."""

    label = "Sintel"
    layout = (
        "<root>/final/<sequence>/frame_*.png, <root>/camdata_left/<sequence>/frame_*.cam "
        "and optional <root>/depth/<sequence>/frame_*.dpt"
    )
    default_sequences = SINTEL_POSE

    def available(self, root: Path) -> list[str]:
        final = self._root_folder(root, "final")
        self._root_folder(root, "camdata_left")
        return sorted(p.name for p in final.iterdir() if p.is_dir())

    def load(self, root: Path, name: str) -> Sequence:
        frames = self._files(root / "final" / name, ".png", name)
        cams = self._files(root / "camdata_left" / name, ".cam", name)
        self._same_count(name, frames, cams, "camera files")
        intrinsics, w2c = zip(*(read_sintel_cam(path) for path in cams))
        depth = self._optional_files(root / "depth" / name, ".dpt", name, frames)
        return Sequence(
            name=name,
            frames=frames,
            gt_poses=np.linalg.inv(np.stack(w2c)),
            gt_depth=depth,
            gt_intrinsics=np.stack(intrinsics),
            depth_max=_MONST3R_MAX_DEPTH,
        )


class BonnReader(DatasetReader):
    """Bonn RGB-D Dynamic, frames 30–139 as MonST3R prepares them; run uncropped (video-depth protocol)."""

    label = "Bonn"
    layout = (
        "<root>/rgbd_bonn_<sequence>/rgb_110/*.png, <root>/rgbd_bonn_<sequence>/groundtruth_110.txt "
        "('t tx ty tz qx qy qz qw' per frame) and optional <root>/rgbd_bonn_<sequence>/depth_110/*.png"
    )
    default_sequences = BONN_SEQUENCES

    def available(self, root: Path) -> list[str]:
        return self._subfolders_with(root, "rgb_110", prefix="rgbd_bonn_")

    def load(self, root: Path, name: str) -> Sequence:
        folder = root / f"rgbd_bonn_{name}"
        frames = self._files(folder / "rgb_110", ".png", name)
        _, poses = read_tum(folder / "groundtruth_110.txt")
        self._same_count(name, frames, poses, "ground-truth poses")
        depth = self._optional_files(folder / "depth_110", ".png", name, frames)
        return Sequence(
            name=name,
            frames=frames,
            gt_poses=poses,
            gt_depth=depth,
            run_overrides=["frames.crop=false"],  # MonST3R's --no_crop for Bonn video depth
            depth_max=_MONST3R_MAX_DEPTH,
        )


class SyntheticReader(DatasetReader):
    """Rendered sequences from ``easi3r synth``: masks, poses, depth and intrinsics, all exact."""

    label = "synthetic"
    layout = (
        "<root>/<sequence>/{rgb/*.png, masks/*.png, depth/*.npy, poses.txt ('t tx ty tz qx qy qz qw' per "
        "frame), intrinsics.txt (9 numbers per frame)}, as 'easi3r synth' writes it"
    )

    def available(self, root: Path) -> list[str]:
        return self._subfolders_with(root, "rgb")

    def load(self, root: Path, name: str) -> Sequence:
        folder = root / name
        frames = self._files(folder / "rgb", ".png", name)
        masks = self._files(folder / "masks", ".png", name)
        depth = self._files(folder / "depth", ".npy", name)
        for files, what in ((masks, "masks/*.png"), (depth, "depth/*.npy")):
            if [p.stem for p in files] != [p.stem for p in frames]:
                raise Easi3RError(
                    f"synthetic sequence {name}: {what} names do not match rgb/*.png names "
                    f"({len(files)} and {len(frames)} files)"
                )
        _, poses = read_tum(folder / "poses.txt")
        self._same_count(name, frames, poses, "poses in poses.txt")
        intrinsics = _read_intrinsics_rows(folder / "intrinsics.txt")
        self._same_count(name, frames, intrinsics, "matrices in intrinsics.txt")
        return Sequence(
            name=name, frames=frames, gt_masks=masks, gt_poses=poses, gt_depth=depth, gt_intrinsics=intrinsics
        )


DATASETS: dict[str, DatasetReader] = {
    "davis": DavisReader(),
    "davis16": DavisReader(DAVIS16_VAL),
    "davis17": DavisReader(DAVIS17_VAL),
    "tum": TumReader(),
    "dycheck": DyCheckReader(),
    "adt": AdtReader(),
    "sintel": SintelReader(),
    "bonn": BonnReader(),
    "synthetic": SyntheticReader(),
}


# --- ground-truth files ------------------------------------------------------------------------------


def read_mask(path: str | os.PathLike[str]) -> NDArray[np.bool_]:
    """``(H, W)`` foreground of a mask PNG: every non-zero pixel (all objects of a DAVIS palette merged).

    Palette images are read as their indices, not their colours, so object ids count whatever colour
    the palette gives them; a colour mask is foreground where any channel is non-zero.
    """
    try:
        with Image.open(path) as img:
            values = np.asarray(img)
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise Easi3RError(f"{os.fspath(path)}: cannot read mask ({exc})") from None
    if values.ndim == 3:
        values = values[..., :3].max(axis=2)  # an alpha channel is not foreground
    return values > 0


def read_depth(path: str | os.PathLike[str]) -> NDArray[np.float32]:
    """``(H, W)`` ground-truth depth in metres, decoded by file type; 0 marks a missing value.

    ``.png``: 16-bit, 1/5000 m per unit (TUM-RGBD, Bonn); ``.npy``: stored as is (DyCheck); ``.dpt``:
    Sintel's binary format.
    """
    path = Path(path)
    try:
        if path.suffix == ".npy":
            depth = np.load(path)
        elif path.suffix == ".dpt":
            depth = _read_sintel_dpt(path)
        elif path.suffix == ".png":
            with Image.open(path) as img:
                raw = np.asarray(img)
            # Pillow gives 16-bit PNGs as uint16 or int32 depending on its version; 8-bit is not depth.
            if raw.dtype == np.uint8 or raw.dtype.kind not in "iu":
                raise ValueError(f"expected a 16-bit depth PNG, got {raw.dtype} samples")
            depth = raw / _PNG_DEPTH_SCALE
        else:
            raise ValueError("unknown depth file type (expected .png, .npy or .dpt)")
    except Easi3RError:
        raise
    except Exception as exc:
        raise Easi3RError(f"{path}: cannot read depth ({exc})") from None
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise Easi3RError(f"{path}: depth must be an (H, W) map, got shape {depth.shape}")
    return depth


def read_sintel_cam(path: str | os.PathLike[str]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(K (3, 3), world-to-camera (4, 4))`` of a Sintel ``.cam`` file (tag, 3×3 then 3×4 float64)."""
    with open(path, "rb") as f:
        _check_sintel_tag(f, path)
        intrinsics = np.fromfile(f, dtype="<f8", count=9)
        extrinsics = np.fromfile(f, dtype="<f8", count=12)
    if intrinsics.size != 9 or extrinsics.size != 12:
        raise Easi3RError(f"{os.fspath(path)}: truncated Sintel camera file")
    w2c = np.eye(4)
    w2c[:3] = extrinsics.reshape(3, 4)
    return intrinsics.reshape(3, 3), w2c


def _read_sintel_dpt(path: Path) -> NDArray[np.float32]:
    with open(path, "rb") as f:
        _check_sintel_tag(f, path)
        width, height = (int(v) for v in np.fromfile(f, dtype="<i4", count=2))
        depth = np.fromfile(f, dtype="<f4", count=-1)
    if depth.size != width * height:
        raise Easi3RError(f"{path}: Sintel depth file holds {depth.size} values for {width}x{height}")
    return depth.reshape(height, width)


def _check_sintel_tag(f, path: str | os.PathLike[str]) -> None:
    tag = np.fromfile(f, dtype="<f4", count=1)
    if tag.size != 1 or tag[0] != np.float32(_SINTEL_TAG):
        raise Easi3RError(f"{os.fspath(path)}: not a Sintel file (bad tag)")


def _read_intrinsics_rows(path: Path) -> NDArray[np.float64]:
    """``(T, 3, 3)`` from a text file of one row-major 3×3 matrix (9 numbers) per line."""
    try:
        values = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise Easi3RError(f"{path}: cannot read intrinsics ({type(exc).__name__}: {exc})") from None
    if values.shape[0] == 0 or values.shape[1] != 9:
        raise Easi3RError(f"{path}: expected 9 numbers (a 3x3 matrix) per line, got shape {values.shape}")
    return values.reshape(-1, 3, 3)


def _read_camera_json(path: Path) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    try:
        data = json.loads(path.read_text())
        w2c = np.asarray(data["w2c"], dtype=np.float64)
        intrinsics = np.asarray(data["K"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Easi3RError(f"{path}: cannot read camera ({type(exc).__name__}: {exc})") from None
    if w2c.shape != (4, 4) or intrinsics.shape != (3, 3):
        raise Easi3RError(f"{path}: expected 'w2c' 4x4 and 'K' 3x3, got {w2c.shape} and {intrinsics.shape}")
    return w2c, intrinsics
