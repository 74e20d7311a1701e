"""How the pipeline's steps are executed, apart from what they compute (:mod:`easi3r.pipeline`).

An :class:`Execution` decodes passes, runs a step on one process and aligns, either

* in memory, in one process (the default: ``Execution()``), or
* streamed through a run cache (:mod:`easi3r.cache`), for long videos: each pass is decoded in chunks of
  pairs written to the cache, chunks already there are skipped (``--resume``), and pass-2 chunks are
  tagged with the masks they were decoded with, so a chunk decoded with other masks is never reused;
* over the ranks of a ``torchrun`` job (always streamed): chunks and alignment windows are dealt round
  robin, the ranks meet at a barrier once every chunk is on disk, rank 0 derives the masks and broadcasts
  them, and rank 0 chains the windows.

No choice made here changes a number: a streamed or distributed run writes the same bytes as an in-memory
one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from easi3r.attention import Reweight
from easi3r.cache import PREDICTION_KEYS, RunCache, fingerprint
from easi3r.contracts import (
    FRAME_SET,
    Aligner,
    Backbone,
    CaptureStrategy,
    FrameSetBackbone,
    FrameSetCapture,
    backbone_kind,
)
from easi3r.distributed import Ranks
from easi3r.errors import Easi3RError
from easi3r.outputs import hold_lock
from easi3r.progress import progress_bar
from easi3r.recipes import resolved_recipe_yaml
from easi3r.types import DynamicMasks, Encoded, Frames, PairAttention, PairOutputs, PassOutputs, Scene
from easi3r.windows import align_in_windows, alignment_windows

__all__ = ["Execution", "chunk_bounds", "open_streamed"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Execution:
    """In memory and in one process unless given a run ``cache`` (chunks of ``chunk_pairs`` pairs) and
    the ``ranks`` of a ``torchrun`` job."""

    def __init__(
        self, cache: RunCache | None = None, chunk_pairs: int = 0, ranks: Ranks | None = None
    ) -> None:
        if cache is None and ranks is not None and ranks.world_size > 1:
            raise ValueError("the ranks of a job share their pairs through a run cache")
        self.cache = cache
        self.chunk_pairs = chunk_pairs
        self.ranks = ranks or Ranks()

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs (rank 0, or the only process)."""
        return self.ranks.is_main

    def decode(
        self,
        backbone: Backbone | FrameSetBackbone,
        encoded: Encoded,
        pairs: Tensor,
        *,
        capture: CaptureStrategy | FrameSetCapture | None = None,
        reweight: Reweight | None = None,
        heads: bool = True,
        label: str = "pass",
    ) -> PassOutputs:
        """Decode every pair (or window of frames) once, with a progress bar; streamed, the predictions
        stay on disk and the captured maps are gathered from every rank's chunks."""
        if backbone_kind(backbone) == FRAME_SET:
            return self._decode_windows(backbone, encoded, pairs, capture, reweight, heads, label)
        with progress_bar(total=len(pairs), desc=label, unit="pair") as bar:
            if self.cache is None:
                return backbone.decode(
                    encoded, pairs, capture=capture, reweight=reweight, heads=heads, progress=bar.update
                )
            name = label.replace(" ", "")
            tag = "" if reweight is None else _masks_tag(reweight.token_masks)
            bounds = chunk_bounds(len(pairs), self.chunk_pairs)
            reused = 0
            for k, (start, end) in enumerate(bounds):
                cached = self.cache.has_chunk(name, start, end, tag)
                reused += cached
                if cached or not self.ranks.owns(k):
                    bar.update(end - start)
                    continue
                out = backbone.decode(
                    encoded,
                    pairs[start:end],
                    capture=capture,
                    reweight=reweight,
                    heads=heads,
                    progress=bar.update,
                )
                self.cache.save_chunk(name, start, end, _chunk_tensors(out), tag)
        if reused:  # only a resumed run finds chunks in the cache
            logger.info("%s: reused %d of %d chunks from the cache", label, reused, len(bounds))
        self.ranks.barrier()  # every rank's chunks are on disk from here on
        attention = None
        if capture is not None:
            maps = [self.cache.load_chunk(name, s, e, ("maps1", "maps2")) for s, e in bounds]
            attention = PairAttention(
                decoder1=torch.cat([m["maps1"] for m in maps]), decoder2=torch.cat([m["maps2"] for m in maps])
            )
        predictions = self.cache.predictions(name, bounds) if heads else None
        return PairOutputs(pairs=pairs.to(torch.long).cpu(), attention=attention, predictions=predictions)

    def _decode_windows(
        self,
        backbone: FrameSetBackbone,
        encoded: Encoded,
        windows: Tensor,
        capture: FrameSetCapture | None,
        reweight: Reweight | None,
        heads: bool,
        label: str,
    ) -> PassOutputs:
        """A frame-set backbone's windows, in memory: they hold per-frame outputs, far less than pairs."""
        if self.cache is not None:
            raise Easi3RError(
                "frame-set backbones run in memory: drop scale.stream=true, --resume and torchrun for them"
            )
        frames = int((windows[:, 1] - windows[:, 0]).sum())
        with progress_bar(total=frames, desc=label, unit="frame") as bar:
            return backbone.decode(
                encoded, windows, capture=capture, reweight=reweight, heads=heads, progress=bar.update
            )

    def on_main(self, step: Callable[[], T], *, share: bool) -> T | None:
        """``step()`` on rank 0 alone, so that every rank goes on with the same result (``share``: sent to
        every rank; otherwise the other ranks get None)."""
        value = step() if self.is_main else None
        return self.ranks.broadcast(value) if share else value

    def align(
        self,
        aligner: Aligner,
        frames: Frames,
        outputs: PassOutputs,
        masks: DynamicMasks | None,
        scale: DictConfig,
    ) -> Scene | None:
        """The aligner over all frames at once, or window by window (``scale.align_window``): windows are
        cached (a resumed run skips the aligned ones) and dealt over the ranks; rank 0 chains them and
        the other ranks get None. A frame-set backbone's outputs come in its own windows already: their
        aligner chains them."""
        window = scale.align_window
        if window is None or len(frames) <= window or not isinstance(outputs, PairOutputs):
            return aligner(frames, outputs, masks, progress_bar) if self.is_main else None
        windows = alignment_windows(len(frames), window, scale.align_overlap)
        store = self.cache.window_store(windows) if self.cache is not None else None
        kwargs = dict(window=window, overlap=scale.align_overlap, progress_bar=progress_bar, store=store)
        if self.ranks.world_size == 1:
            return align_in_windows(aligner, frames, outputs, masks, **kwargs)
        align_in_windows(aligner, frames, outputs, masks, only=self.ranks.owns, **kwargs)
        self.ranks.barrier()  # every window is in the cache from here on
        return align_in_windows(aligner, frames, outputs, masks, **kwargs) if self.is_main else None


def chunk_bounds(n_pairs: int, chunk_pairs: int) -> list[tuple[int, int]]:
    """Half-open pair ranges of ``chunk_pairs`` pairs (the last may be shorter)."""
    return [(start, min(start + chunk_pairs, n_pairs)) for start in range(0, n_pairs, chunk_pairs)]


def _masks_tag(token_masks: Tensor) -> str:
    # pass-2 chunks depend on the pass-1 masks: a chunk decoded with other masks must not be reused
    return hashlib.sha256(token_masks.cpu().numpy().tobytes()).hexdigest()


def _chunk_tensors(out: PairOutputs) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    if out.attention is not None:
        tensors.update(maps1=out.attention.decoder1, maps2=out.attention.decoder2)
    if out.predictions is not None:
        tensors.update({key: getattr(out.predictions, key) for key in PREDICTION_KEYS})
    return tensors


def open_streamed(
    recipe: DictConfig,
    frames: Frames,
    backbone: Backbone,
    root: Path,
    *,
    resume: bool,
    overwrite: bool,
    ranks: Ranks,
    held: contextlib.ExitStack,
    log: Callable[[str], None],
) -> Execution:
    """A streamed execution over the run cache ``root``: rank 0 locks and opens it (or, resuming, checks
    it); the other ranks join it once that is done.

    Only rank 0 holds the cache's lock (in ``held``): the ranks of one run share the cache, other runs may
    not. Chunks hold whole backbone batches, so the batches are those of an in-memory run.
    """
    batch = int(getattr(backbone, "batch_size", 1))
    chunk_pairs = -(-recipe.scale.chunk_pairs // batch) * batch

    def open_cache() -> None:
        held.enter_context(hold_lock(root, "using this run cache"))
        if overwrite and not resume:
            RunCache.attach(root).remove()
        RunCache(root, _fingerprint(recipe, frames), resume=resume, log=log)

    ranks.check_on_main(open_cache)
    return Execution(RunCache.attach(root), chunk_pairs, ranks)


def _fingerprint(recipe: DictConfig, frames: Frames) -> str:
    """What the cached numbers depend on: not the exporters, nor whether the run was told to stream."""
    numbers = recipe.copy()
    numbers.export.exporters = []
    numbers.export.dilate = 0
    numbers.scale.stream = True
    return fingerprint(resolved_recipe_yaml(numbers), frames.images, recipe.backbone.checkpoint)
