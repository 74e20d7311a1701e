"""What every frame-set backbone does around its network: windows, attention hooks, per-frame maps.

A frame-set backbone (:class:`easi3r.contracts.FrameSetBackbone`) only has to run one window of frames
through its network with a :class:`~easi3r.attention.GlobalAttentionHook` called in its global-attention
layers; :func:`decode_windows` does the rest the same way for every such backbone: one hook per window
(its capture and its dynamic tokens), the captured maps of each frame taken from the window it sits
deepest in, and the predictions of every window kept for the aligner.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from easi3r.attention import GlobalAttentionHook, Reweight
from easi3r.contracts import FrameSetCapture, Progress
from easi3r.types import Encoded, FrameMaps, FrameSetOutputs, FrameSetPredictions
from easi3r.windows import home_windows

__all__ = ["WindowForward", "decode_windows"]

WindowForward = Callable[[int, int, GlobalAttentionHook, bool], "FrameSetPredictions | None"]
"""``forward(start, end, hook, heads)``: run frames ``[start, end)`` with ``hook`` in every global layer;
return their predictions when ``heads`` (else None, and the heads may be skipped)."""


def decode_windows(
    encoded: Encoded,
    windows: Tensor,
    forward: WindowForward,
    *,
    special_tokens: int,
    device: torch.device | str,
    capture: FrameSetCapture | None = None,
    reweight: Reweight | None = None,
    heads: bool = True,
    progress: Progress | None = None,
) -> FrameSetOutputs:
    """Run ``forward`` on every window of ``windows (W, 2)`` and gather a pass's outputs.

    ``special_tokens`` is the number of tokens each frame carries before its patch tokens (a camera
    token, registers): never dynamic, never captured.
    """
    window_maps: list[dict[str, Tensor]] = []
    predictions: list[FrameSetPredictions] = []
    for start, end in windows.tolist():
        window_capture = None if capture is None else capture.window(end - start, encoded.grid)
        hook = GlobalAttentionHook(
            frames=end - start,
            special_tokens=special_tokens,
            capture=window_capture,
            capture_layers=frozenset() if capture is None else capture.layers,
            reweight=reweight,
            dynamic=None if reweight is None else reweight.for_window(start, end, special_tokens, device),
        )
        prediction = forward(start, end, hook, heads)
        if heads:
            if prediction is None:
                raise RuntimeError("a frame-set backbone returned no predictions for a window")
            predictions.append(prediction)
        if window_capture is not None:
            window_maps.append(window_capture.maps())
        if progress is not None:
            progress(end - start)
    maps = None if capture is None else FrameMaps(_home_maps(window_maps, windows, encoded.tokens.shape[0]))
    return FrameSetOutputs(
        windows=windows.to(torch.long).cpu(), maps=maps, predictions=predictions if heads else None
    )


def _home_maps(window_maps: list[dict[str, Tensor]], windows: Tensor, n_frames: int) -> dict[str, Tensor]:
    """Every frame's maps from its home window (:func:`easi3r.windows.home_windows`)."""
    home = home_windows(windows, n_frames)
    starts = windows[:, 0]
    out = {}
    for name in window_maps[0]:
        out[name] = torch.stack(
            [window_maps[k][name][t - int(starts[k])] for t, k in enumerate(home.tolist())]
        )
    return out
