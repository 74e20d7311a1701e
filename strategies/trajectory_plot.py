"""``scene/trajectory.png``: the camera positions seen from above and per axis, drawn with OpenCV.

Matplotlib is not a dependency, and its PNG files carry its version: a few lines of OpenCV give the same
picture with bytes that depend only on the positions. Layout and conventions: ``docs/outputs.md``,
section "Trajectory".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from easi3r import writers

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SCALE = 0.45
_TEXT = (30, 30, 30)
_GRID = (225, 225, 225)
_FRAME = (90, 90, 90)
_WHITE = (255, 255, 255)

# layout in pixels: the top view is square (one scale for x and z), the three axis plots stack beside it
_TOP = 440
_AXIS_W, _AXIS_H, _AXIS_GAP = 560, 120, 40
_BAR_W, _BAR_GAP = 18, 70
_LEFT, _RIGHT, _UP, _DOWN = 90, 60, 40, 50
_WIDTH = _LEFT + _TOP + _LEFT + _AXIS_W + _BAR_GAP + _BAR_W + _RIGHT
_HEIGHT = _UP + _TOP + _DOWN


@dataclass(frozen=True)
class _Axes:
    """A plot rectangle (pixels: left, top, width, height) and the data ranges it shows."""

    left: int
    top: int
    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_step: float = 0.0  # the least step between x ticks (1 for frame indices)

    def pixel(self, x: float, y: float) -> tuple[int, int]:
        """Data to pixel; y grows upwards on screen, like on paper."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        u = self.left + (x - x0) / (x1 - x0) * (self.width - 1)
        v = self.top + (y1 - y) / (y1 - y0) * (self.height - 1)
        return round(u), round(v)


def _padded(low: float, high: float) -> tuple[float, float]:
    """A range with 5% margins, never empty (a still camera has one value)."""
    span = high - low
    pad = 0.05 * span if span > 0 else max(0.05 * abs(low), 0.5)
    return low - pad, high + pad


def _ticks(low: float, high: float, count: int = 5, least: float = 0.0) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart, at least ``least``), about ``count`` of them in
    [low, high]."""
    raw = max((high - low) / count, least)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.ceil(low / step), math.floor(high / step)
    return [k * step for k in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value + 0.0:.3g}"  # + 0.0: no "-0"


def _text(canvas: np.ndarray, text: str, at: tuple[int, int], align: str = "left") -> None:
    """``at`` is the baseline's left end, centre or right end (``align``)."""
    width = cv2.getTextSize(text, _FONT, _SCALE, 1)[0][0]
    shift = {"left": 0, "center": width // 2, "right": width}[align]
    cv2.putText(canvas, text, (at[0] - shift, at[1]), _FONT, _SCALE, _TEXT, 1, cv2.LINE_AA)


def _vertical_text(canvas: np.ndarray, text: str, centre: tuple[int, int]) -> None:
    """Text turned 90° counter-clockwise (read bottom to top), centred on ``centre``."""
    (width, height), base = cv2.getTextSize(text, _FONT, _SCALE, 1)
    strip = np.full((height + base + 4, width + 4, 3), 255, np.uint8)
    cv2.putText(strip, text, (2, height + 2), _FONT, _SCALE, _TEXT, 1, cv2.LINE_AA)
    strip = np.rot90(strip)
    top, left = centre[1] - strip.shape[0] // 2, centre[0] - strip.shape[1] // 2
    canvas[top : top + strip.shape[0], left : left + strip.shape[1]] = strip


def _draw_axes(canvas: np.ndarray, axes: _Axes, x_label: str, y_label: str, title: str) -> None:
    """Grid, frame, tick labels, axis labels and title."""
    right, bottom = axes.left + axes.width - 1, axes.top + axes.height - 1
    for x in _ticks(*axes.x_range, least=axes.x_step):
        u = axes.pixel(x, 0.0)[0]
        cv2.line(canvas, (u, axes.top), (u, bottom), _GRID, 1)
        cv2.line(canvas, (u, bottom), (u, bottom + 4), _FRAME, 1)
        _text(canvas, _label(x), (u, bottom + 18), "center")
    for y in _ticks(*axes.y_range, count=max(3, axes.height // 40)):
        v = axes.pixel(0.0, y)[1]
        cv2.line(canvas, (axes.left, v), (right, v), _GRID, 1)
        cv2.line(canvas, (axes.left - 4, v), (axes.left, v), _FRAME, 1)
        _text(canvas, _label(y), (axes.left - 7, v + 5), "right")
    cv2.rectangle(canvas, (axes.left, axes.top), (right, bottom), _FRAME, 1)
    if x_label:
        _text(canvas, x_label, (axes.left + axes.width // 2, bottom + 38), "center")
    _vertical_text(canvas, y_label, (axes.left - 74, axes.top + axes.height // 2))
    _text(canvas, title, (axes.left, axes.top - 8))


def _draw_path(canvas: np.ndarray, axes: _Axes, xs: np.ndarray, ys: np.ndarray, colors: np.ndarray) -> None:
    """Segments between consecutive positions and a dot per position, each in its frame's colour."""
    pixels = [axes.pixel(float(x), float(y)) for x, y in zip(xs, ys)]
    for t in range(1, len(pixels)):
        cv2.line(canvas, pixels[t - 1], pixels[t], tuple(map(int, colors[t])), 2, cv2.LINE_AA)
    for pixel, color in zip(pixels, colors):
        cv2.circle(canvas, pixel, 3, tuple(map(int, color)), -1, cv2.LINE_AA)


def _draw_colour_bar(canvas: np.ndarray, left: int, top: int, height: int, frames: int) -> None:
    """Turbo from frame 0 (bottom) to the last frame (top), the scale the paths are coloured with."""
    shades = writers.colorize(np.linspace(1, 0, height)[:, None])
    canvas[top : top + height, left : left + _BAR_W] = shades
    cv2.rectangle(canvas, (left, top), (left + _BAR_W - 1, top + height - 1), _FRAME, 1)
    last = max(frames - 1, 1)
    for t in sorted({round(k * last / 4) for k in range(5)} if frames > 1 else {0}):
        v = top + round((1 - t / last) * (height - 1))
        cv2.line(canvas, (left + _BAR_W - 1, v), (left + _BAR_W + 3, v), _FRAME, 1)
        _text(canvas, str(t), (left + _BAR_W + 7, v + 5))
    _text(canvas, "frame", (left + _BAR_W // 2, top - 8), "center")


def plot_trajectory(positions: np.ndarray) -> np.ndarray:
    """RGB picture of the (T, 3) camera centres: the top view (x to the right, z up) and x, y, z against
    the frame index, coloured by time (turbo: first frame blue, last red). Non-finite positions are left
    out of the drawing."""
    positions = np.asarray(positions, np.float64)
    frames = len(positions)
    shown = np.isfinite(positions).all(1)
    index, kept = np.arange(frames)[shown], positions[shown]
    colors = writers.colorize(np.linspace(0, 1, frames)[None])[0][shown]
    low = kept.min(0) if len(kept) else np.zeros(3)
    high = kept.max(0) if len(kept) else np.zeros(3)
    canvas = np.full((_HEIGHT, _WIDTH, 3), _WHITE, np.uint8)

    # one scale for both axes of the top view, so distances and turns keep their shape
    centre, half = (low + high) / 2, max(float((high - low)[[0, 2]].max()) / 2, 1e-12)
    x_range = _padded(centre[0] - half, centre[0] + half)
    z_range = _padded(centre[2] - half, centre[2] + half)
    top_view = _Axes(_LEFT, _UP, _TOP, _TOP, x_range, z_range)
    _draw_axes(canvas, top_view, "x", "z", "top view (x-z)")
    _draw_path(canvas, top_view, kept[:, 0], kept[:, 2], colors)

    frame_range = _padded(0.0, float(max(frames - 1, 0)))
    for axis, name in enumerate("xyz"):
        plot = _Axes(
            _LEFT + _TOP + _LEFT,
            _UP + axis * (_AXIS_H + _AXIS_GAP),
            _AXIS_W,
            _AXIS_H,
            frame_range,
            _padded(float(low[axis]), float(high[axis])),
            x_step=1.0,
        )
        _draw_axes(
            canvas, plot, "frame" if axis == 2 else "", name, f"{name} against frame" if axis == 0 else ""
        )
        _draw_path(canvas, plot, index.astype(np.float64), kept[:, axis], colors)

    _draw_colour_bar(canvas, _WIDTH - _RIGHT - _BAR_W, _UP, _TOP, frames)
    return canvas
