"""How much memory a run will take, said before it starts (and used to decide ``scale.stream: auto``).

Sizes come from the tensors the run will hold, whose shapes are known from the frames, the pair list
and the backbone; the alignment term is calibrated on ``benchmarks/bench_align.py`` (the spanning-tree initialisation
sets the peak: about 81 bytes per pair and pixel at 144×256, float32, on top of the predictions it
reads) and on whole runs (``benchmarks/bench_scale.py``): 100 are counted. The fixed cost of Python and
PyTorch themselves (about 0.4 GiB) is counted too. ``benchmarks/bench_scale.py`` prints it beside the
measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor

__all__ = ["FrameSetEstimate", "RunEstimate", "available_memory", "estimate_frame_set", "estimate_run"]

GiB = 1024**3
RUNTIME_BYTES = int(0.4 * GiB)  # the interpreter, torch and the libraries, before any tensor
ALIGN_BYTES_PER_PAIR_PIXEL = 100
_PREDICTION_FLOATS = 8  # two pointmaps (3 + 3) and two confidences per pixel of a pair


@dataclass
class RunEstimate:
    """Peak-memory estimate of one run, by part, in bytes."""

    frames: int  # number of frames
    pairs: int  # ordered pairs per pass
    size: tuple[int, int]  # (H, W)
    model: int
    images: int
    maps: int  # captured attention maps of every pair, both passes
    pair_outputs: int  # predictions of every pair, held in memory (streaming holds one chunk instead)
    chunk: int  # one chunk of pair outputs (what streaming holds)
    alignment: int  # working memory of the largest alignment problem (all frames, or the largest window)
    alignment_inputs: int  # the pair predictions that problem reads
    scene: int  # per-frame results: points, depth, confidence, masks
    window: int | None  # frames per alignment window, None for all at once

    def total(self, streamed: bool) -> int:
        fixed = RUNTIME_BYTES + self.model + self.images + self.maps + self.scene
        if streamed:  # one chunk while decoding; later the aligner reads its pairs back from the cache
            return fixed + max(self.chunk, self.alignment_inputs + self.alignment)
        return fixed + self.pair_outputs + self.alignment

    def describe(self, streamed: bool, cache: Path | str, available: int | None) -> str:
        """The one line printed before a run."""
        height, width = self.size
        outputs = f"pair outputs {_gib(self.pair_outputs)}"
        aligning = self.alignment
        if streamed:  # the aligner then reads its pairs back from the cache
            outputs = f"pair outputs {_gib(self.chunk)} per chunk, streamed to {cache}"
            aligning += self.alignment_inputs
        where = "all frames at once" if self.window is None else f"windows of {self.window} frames"
        line = (
            f"{self.frames} frames of {width}×{height}, {self.pairs} pairs per pass; estimated peak memory "
            f"{_gib(self.total(streamed))} GiB (model {_gib(self.model)}, frames {_gib(self.images)}, "
            f"maps {_gib(self.maps)}, {outputs}, alignment {_gib(aligning)} over {where})"
        )
        if available is not None:
            line += f" of {_gib(available)} GiB available"
        return line

    def advice(self, streamed: bool, available: int | None) -> str | None:
        """What to change when the estimate does not fit, or None when it does."""
        if available is None or self.total(streamed) <= available:
            return None
        fixes = []
        if not streamed and self.pair_outputs > self.chunk:
            fixes.append("scale.stream=true")
        if self.alignment > available // 2:
            fixes.append("scale.align_window=30 (or smaller)")
        hint = " or ".join(fixes) if fixes else "fewer frames (frames.max_frames, frames.stride)"
        return f"the estimate exceeds the available memory: try {hint}"


def estimate_run(
    recipe: DictConfig, images: Tensor, pairs: Tensor, backbone: object, windows: list[tuple[int, int]] | None
) -> RunEstimate:
    """The estimate for ``images`` (T, 3, H, W), ordered ``pairs`` (P, 2), a built backbone and the
    alignment ``windows`` (None: all frames at once)."""
    n_frames, _, height, width = images.shape
    n_pairs = len(pairs)
    model = getattr(backbone, "model", None)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
    patch = getattr(backbone, "patch_size", 16)
    tokens = (height // patch) * (width // patch)
    channels = getattr(backbone, "decoder_layers", 12) * getattr(backbone, "decoder_heads", 12)
    passes = 2 if recipe.passes.masks and recipe.passes.reweight else 1
    kept_predictions = (
        2 if passes == 2 and (recipe.passes.pass1_heads or recipe.export.save_intermediates) else 1
    )
    pair_pixels = height * width * _PREDICTION_FLOATS * 4
    chunk_pairs = recipe.scale.chunk_pairs
    aligns_nothing = recipe.align.name == "none"
    if windows is None:
        align_pairs = n_pairs
    else:
        align_pairs = max(int(((pairs >= start) & (pairs < end)).all(1).sum()) for start, end in windows)
    return RunEstimate(
        frames=n_frames,
        pairs=n_pairs,
        size=(height, width),
        model=model_bytes,
        images=images.numel() * images.element_size(),
        maps=passes * n_pairs * tokens * channels * 2 * 4,
        pair_outputs=kept_predictions * n_pairs * pair_pixels,
        chunk=2 * min(chunk_pairs, n_pairs) * pair_pixels,  # the chunk being decoded and the one saved
        alignment=0 if aligns_nothing else align_pairs * height * width * ALIGN_BYTES_PER_PAIR_PIXEL,
        alignment_inputs=0 if aligns_nothing else align_pairs * pair_pixels,
        scene=n_frames * height * width * 7 * 4,
        window=None if windows is None else windows[0][1] - windows[0][0],
    )


_FRAME_SET_FLOATS = 10  # per pixel of a frame: pose-free depth + confidence, points + confidence, kept twice


@dataclass
class FrameSetEstimate:
    """Peak-memory estimate of a run of a frame-set backbone (windows of frames, in memory), in bytes."""

    frames: int
    windows: int
    window: int  # frames in the largest window
    size: tuple[int, int]
    model: int
    images: int  # frames and their embeddings
    activations: int  # one window's forward, as the backbone reckons it (0: the backbone does not say)
    outputs: int  # every window's predictions and the captured maps
    scene: int

    def total(self) -> int:
        return RUNTIME_BYTES + self.model + self.images + self.activations + self.outputs + self.scene

    def describe(self, available: int | None) -> str:
        """The one line printed before a run."""
        height, width = self.size
        activations = _gib(self.activations) if self.activations else "not reckoned by the backbone"
        line = (
            f"{self.frames} frames of {width}×{height} in {self.windows} window(s) of up to {self.window} "
            f"frames; estimated peak memory {_gib(self.total())} GiB (model {_gib(self.model)}, frames and "
            f"embeddings {_gib(self.images)}, one window's forward {activations}, outputs "
            f"{_gib(self.outputs)}, scene {_gib(self.scene)})"
        )
        if available is not None:
            line += f" of {_gib(available)} GiB available"
        return line

    def advice(self, available: int | None) -> str | None:
        if available is None or self.total() <= available:
            return None
        return "the estimate exceeds the available memory: try a smaller scale.align_window or fewer frames"


def estimate_frame_set(images: Tensor, windows: Tensor, backbone: object) -> FrameSetEstimate:
    """The estimate for ``images`` (T, 3, H, W) run by a frame-set ``backbone`` in ``windows`` (W, 2).

    The forward's working memory comes from the backbone's ``window_bytes(frames, height, width)`` when it
    has one (it knows its token width and what its heads keep)."""
    n_frames, _, height, width = images.shape
    largest = int((windows[:, 1] - windows[:, 0]).max())
    model = getattr(backbone, "model", None)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
    window_bytes = getattr(backbone, "window_bytes", None)
    embeddings = getattr(backbone, "embedding_bytes", lambda h, w: 0)(height, width) * n_frames
    covered = int((windows[:, 1] - windows[:, 0]).sum())
    return FrameSetEstimate(
        frames=n_frames,
        windows=len(windows),
        window=largest,
        size=(height, width),
        model=model_bytes,
        images=images.numel() * images.element_size() + embeddings,
        activations=0 if window_bytes is None else int(window_bytes(largest, height, width)),
        outputs=covered * height * width * _FRAME_SET_FLOATS * 4,
        scene=n_frames * height * width * 7 * 4,
    )


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes; None where Linux has none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"
