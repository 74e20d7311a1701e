"""The on-disk run cache: pair outputs out of memory for long videos, and ``--resume`` after a crash.

A run that streams keeps one folder (by default ``OUT.cache`` beside the output folder)::

    manifest.json                         what run the files belong to (a fingerprint of recipe and frames)
    pass1/000000-000063.safetensors       pairs [0, 64) of pass 1: captured maps and/or predictions
    pass2/...
    align/window-000000-000030.safetensors   one aligned window of frames (window-wise alignment)

Every file is written under a temporary name and renamed into place, so a file under its final name is
complete whatever killed the run; a resumed run loads those and computes only what is missing. Each
file carries a CRC-32 of its tensors (metadata ``checksum``): resuming checks every file first and
recomputes the ones the disk has damaged. The decoding order and batches are the same either way, so
a resumed run writes the same bytes as an uninterrupted one. The folder is removed when the outputs
have been written (unless kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from easi3r.errors import Easi3RError
from easi3r.geometry import Scene
from easi3r.outputs import write_error
from easi3r.types import PairPredictions
from easi3r.writers import save_safetensors

__all__ = ["PREDICTION_KEYS", "RunCache", "StoredPredictions", "checksum", "fingerprint"]

logger = logging.getLogger(__name__)

FORMAT = 1
PREDICTION_KEYS = ("pts3d_1", "conf_1", "pts3d_2", "conf_2")
_SCENE_KEYS = ("cam2world", "intrinsics", "depth", "conf", "pts3d", "masks")


def fingerprint(recipe_yaml: str, images: Tensor, checkpoint: str | None) -> str:
    """What decides a run's numbers: the resolved recipe, the frame pixels and the checkpoint file."""
    digest = hashlib.sha256(recipe_yaml.encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    if checkpoint and Path(checkpoint).is_file():
        stat = Path(checkpoint).stat()
        digest.update(f"{Path(checkpoint).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def checksum(names: Iterable[str], tensor: Callable[[str], Tensor]) -> str:
    """CRC-32 of the named tensors' names, dtypes, shapes and bytes: a flipped byte anywhere changes it.

    ``tensor(name)`` is asked for one tensor at a time, so a file is checked without loading it whole.
    CRC-32 rather than SHA-256: it catches damage, not tampering, at about twice the speed.
    """
    crc = 0
    for name in sorted(names):
        t = tensor(name).detach().cpu()
        crc = zlib.crc32(f"{name}:{t.dtype}:{tuple(t.shape)};".encode(), crc)
        crc = zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return f"crc32:{crc:08x}"


def _atomic_save(
    root: Path, path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``path`` (in the cache ``root``) under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    cpu = {name: t.detach().cpu() for name, t in tensors.items()}
    try:
        path.parent.mkdir(exist_ok=True)
        save_safetensors(tmp, cpu, {**(metadata or {}), "checksum": checksum(cpu, cpu.__getitem__)})
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # the finished files stay valid; this one is recomputed
        if isinstance(exc, OSError):
            raise write_error(
                root,
                path.relative_to(root),
                exc,
                "the finished chunks are kept; free some space and run again with --resume",
            ) from None
        raise


class RunCache:
    """One run's cache folder. ``resume=False`` refuses an existing cache rather than mixing two runs."""

    def __init__(
        self,
        root: str | Path,
        fingerprint: str,
        *,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if self.root.exists() and not self.root.is_dir():
            raise Easi3RError(
                f"{self.root}: the run cache path exists and is not a folder; choose another --cache"
            )
        if resume:
            if not manifest.is_file():
                raise Easi3RError(
                    f"{self.root}: no run cache to resume (only streaming runs, scale.stream=true, keep one)"
                )
            try:
                found = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise Easi3RError(f"{manifest}: unreadable cache manifest ({exc})") from None
            if found.get("format") != FORMAT or found.get("fingerprint") != fingerprint:
                raise Easi3RError(
                    f"{self.root}: the cache belongs to another run (recipe, frames or checkpoint differ); "
                    "delete it or run with --overwrite to start over"
                )
            for stale in self.root.rglob(".*.tmp-*"):  # half-written files of the killed run
                stale.unlink()
            self._drop_damaged(log or logger.info)
        else:
            if self.root.exists() and any(self.root.iterdir()) and not manifest.is_file():
                raise Easi3RError(
                    f"{self.root}: folder exists and is not a run cache; choose another --cache"
                )
            if self.root.exists() and any(self.root.iterdir()):
                raise Easi3RError(
                    f"{self.root}: a cache of an interrupted run is here; pass --resume to continue it "
                    "or --overwrite to start over"
                )
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                manifest.write_text(json.dumps({"format": FORMAT, "fingerprint": fingerprint}) + "\n")
            except OSError as exc:
                raise Easi3RError(
                    f"{self.root}: cannot create the run cache ({exc.strerror or exc})"
                ) from None

    def _drop_damaged(self, log: Callable[[str], None]) -> None:
        """Delete the files whose bytes no longer match their checksum, so that they are recomputed."""
        for path in sorted(self.root.rglob("*.safetensors")):
            try:
                with safe_open(str(path), "pt") as f:
                    stored = (f.metadata() or {}).get("checksum")
                    why = None if stored == checksum(f.keys(), f.get_tensor) else "checksum mismatch"
            except (OSError, SafetensorError):
                why = "unreadable"
            if why is not None:
                log(f"cache chunk {path.relative_to(self.root)} is corrupt ({why}); recomputing it")
                path.unlink()

    @classmethod
    def attach(cls, root: str | Path) -> RunCache:
        """The cache another process (rank 0 of a distributed run) has opened and checked."""
        cache = cls.__new__(cls)
        cache.root = Path(root)
        return cache

    # -- pair chunks --

    def chunk_path(self, pass_name: str, start: int, end: int) -> Path:
        return self.root / pass_name / f"{start:06d}-{end - 1:06d}.safetensors"

    def has_chunk(self, pass_name: str, start: int, end: int, tag: str = "") -> bool:
        """Whether pairs [start, end) of the pass are on disk, decoded from the inputs ``tag`` names."""
        path = self.chunk_path(pass_name, start, end)
        if not path.is_file():
            return False
        with _open(path) as f:
            return (f.metadata() or {}).get("tag", "") == tag

    def load_chunk(self, pass_name: str, start: int, end: int, keys: tuple[str, ...]) -> dict[str, Tensor]:
        """Some tensors of a finished chunk (only those: a chunk's predictions can be large)."""
        path = self.chunk_path(pass_name, start, end)
        with _open(path) as f:
            missing = set(keys) - set(f.keys())
            if missing:
                raise Easi3RError(
                    f"{path}: cache file lacks {sorted(missing)}; delete the cache to start over"
                )
            return {key: f.get_tensor(key) for key in keys}

    def save_chunk(
        self, pass_name: str, start: int, end: int, tensors: Mapping[str, Tensor], tag: str = ""
    ) -> Path:
        path = self.chunk_path(pass_name, start, end)
        _atomic_save(self.root, path, tensors, {"tag": tag})
        return path

    def predictions(self, pass_name: str, bounds: list[tuple[int, int]]) -> StoredPredictions:
        """The predictions of a finished pass, read from its chunks when asked for."""
        return StoredPredictions([(s, e, self.chunk_path(pass_name, s, e)) for s, e in bounds])

    # -- aligned windows --

    def window_store(self, windows: list[tuple[int, int]]) -> WindowFiles:
        return WindowFiles(self.root, windows)

    def remove(self) -> None:
        """Delete the cache folder; a folder that is not a run cache (no manifest) is left alone."""
        if (self.root / "manifest.json").is_file():
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """A safetensors file opened for reading single tensors; an unreadable one is a one-line error."""
    try:
        with safe_open(str(path), "pt") as f:
            yield f
    except (OSError, SafetensorError) as exc:
        raise Easi3RError(f"{path}: unreadable cache file ({exc}); delete the cache to start over") from None


class StoredPredictions:
    """Pair predictions kept in cache chunks: ``select`` loads only the chunks holding the pairs asked for.

    Stands in for :class:`~easi3r.types.PairPredictions` wherever the pipeline only needs ``len`` and
    ``select`` (the aligners, the pair-prediction writer), so memory follows what is selected.
    """

    def __init__(self, chunks: list[tuple[int, int, Path]]) -> None:
        self.chunks = chunks
        self._len = chunks[-1][1] if chunks else 0

    def __len__(self) -> int:
        return self._len

    def select(self, indices: Tensor) -> PairPredictions:
        indices = torch.as_tensor(indices, dtype=torch.long)
        parts: dict[str, list[Tensor]] = {k: [] for k in PREDICTION_KEYS}
        order = []
        for start, end, path in self.chunks:
            inside = ((indices >= start) & (indices < end)).nonzero().flatten()
            if len(inside) == 0:
                continue
            rows = indices[inside] - start
            with _open(path) as f:
                for key in PREDICTION_KEYS:
                    parts[key].append(f.get_tensor(key)[rows])
            order.append(inside)
        if len(indices) and not order:
            raise IndexError(f"pair indices outside the {len(self)} stored pairs")
        # chunks were visited in file order: put the rows back in the order asked for
        back = torch.empty(len(indices), dtype=torch.long)
        back[torch.cat(order)] = torch.arange(len(indices))
        return PairPredictions(**{k: torch.cat(v)[back] for k, v in parts.items()})

    def iter_chunks(self) -> Iterator[tuple[int, dict[str, Tensor]]]:
        """(first pair, tensors) of each chunk in order, for writers that stream the whole pass."""
        for start, _, path in self.chunks:
            with _open(path) as f:
                yield start, {key: f.get_tensor(key) for key in PREDICTION_KEYS}


class WindowFiles:
    """Aligned windows on disk (:class:`easi3r.windows.WindowStore`), named by their frame range."""

    def __init__(self, cache_root: Path, windows: list[tuple[int, int]]) -> None:
        self.cache_root, self.windows = cache_root, windows

    def _path(self, k: int) -> Path:
        start, end = self.windows[k]
        return self.cache_root / "align" / f"window-{start:06d}-{end - 1:06d}.safetensors"

    def load(self, k: int) -> Scene | None:
        path = self._path(k)
        if not path.is_file():
            return None
        with _open(path) as f:
            names = f.keys()
            tensors = {key: f.get_tensor(key) for key in names}
        conf_is_log = bool(tensors.pop("conf_is_log").item())
        return Scene(**tensors, conf_is_log=conf_is_log)

    def save(self, k: int, scene: Scene) -> None:
        tensors = {key: getattr(scene, key) for key in _SCENE_KEYS if getattr(scene, key) is not None}
        tensors["conf_is_log"] = torch.tensor(scene.conf_is_log)
        _atomic_save(self.cache_root, self._path(k), tensors)
