"""Small, deterministic writers and image helpers shared by the exporters.

Pure functions over arrays: they know nothing about recipes or pipeline results. Images are numpy
``uint8`` arrays, ``(H, W)`` gray or ``(H, W, 3)`` RGB (never BGR: OpenCV's channel order stays inside this
module); maps are ``(H, W)`` floats in [0, 1]; masks are ``(H, W)`` bool. Functions that take a map or a
mask also accept a torch tensor, so callers can pass pipeline values as they are.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as safetensors_save
from torch import Tensor

Array = np.ndarray | Tensor

# overview layout, in pixels
_GAP = 2
_MARGIN = 6
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_BACKGROUND = 24
_TEXT = (230, 230, 230)
_BAR_WIDTH = 12

# H.264 quality: 18 is visually lossless, so the video shows what the PNGs show
_CRF = 18

Legend = Callable[[int], np.ndarray]  # height in pixels -> (height, any width, 3) RGB picture


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def write_png(path: str | Path, array: Array) -> Path:
    """Write a ``uint8`` image, ``(H, W)`` gray or ``(H, W, 3)`` RGB, creating parent folders."""
    image = _numpy(array)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
    return path


def colorize(values: Array, colormap: int = cv2.COLORMAP_TURBO) -> np.ndarray:
    """``(H, W)`` map in [0, 1] → ``(H, W, 3)`` RGB ``uint8`` with a perceptual colour map.

    Out-of-range values are clipped and NaN is drawn as 0, so a degenerate map (e.g. the NaN std of a
    frame with a single pair) still gives a picture instead of an error.
    """
    x = _numpy(values).astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got {x.shape}")
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(x * 255).astype(np.uint8), colormap)
    return np.ascontiguousarray(bgr[..., ::-1])


def upsample_nearest(values: Array, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(NH, NW, ...)`` to ``(H, W, ...)``, so every token shows as a block.

    Indexing by pixel centres (rather than ``cv2.INTER_NEAREST``, which is off by half a pixel) gives
    exact ``H/NH × W/NW`` blocks when the sizes divide, and works for any dtype and trailing channels.
    """
    x = _numpy(values)
    height, width = size
    rows = np.minimum(((np.arange(height) + 0.5) * x.shape[0] / height).astype(np.int64), x.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * x.shape[1] / width).astype(np.int64), x.shape[1] - 1)
    return np.ascontiguousarray(x[rows][:, cols])


def overlay(
    rgb: Array,
    mask: Array,
    color: tuple[int, int, int] = (255, 0, 64),
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend ``color`` over the masked pixels of ``rgb`` and outline the mask in ``color``.

    The outline follows the mask's own border pixels (outer borders and hole borders), so the result
    differs from ``rgb`` only inside the mask.
    """
    image, m = _numpy(rgb), _numpy(mask).astype(bool)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != m.shape:
        raise ValueError(f"expected uint8 (H, W, 3) and an (H, W) mask, got {image.shape} and {m.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = image.copy()
    tint = np.asarray(color, dtype=np.float32)
    out[m] = np.round((1 - alpha) * image[m].astype(np.float32) + alpha * tint).astype(np.uint8)
    # CHAIN_APPROX_NONE keeps every border pixel, so the 1-px polyline never cuts across background.
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness=1)
    return out


def dilate(mask: Array, kernel: int) -> np.ndarray:
    """Square ``kernel × kernel`` binary dilation (the reference's "enlarged" masks use 3); 0 or 1 = copy."""
    m = _numpy(mask).astype(bool)
    if kernel < 0:
        raise ValueError(f"kernel must be >= 0, got {kernel}")
    if kernel <= 1:
        return m.copy()
    return cv2.dilate(m.astype(np.uint8), np.ones((kernel, kernel), np.uint8)).astype(bool)


def spread_indices(count: int, at_most: int) -> list[int]:
    """At most ``at_most`` evenly spaced indices into ``range(count)``, first and last included."""
    if count <= at_most:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, at_most).round()]


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _thumbnail(image: np.ndarray, width: int, height: int) -> np.ndarray:
    image = _rgb(image)
    if image.shape[:2] == (height, width):
        return image
    # area averaging when shrinking avoids aliasing; nearest when enlarging keeps token blocks sharp
    shrink = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)


def _text_size(text: str) -> tuple[int, int]:
    return cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0]


def _put_text(canvas: np.ndarray, text: str, x: int, baseline: int) -> None:
    cv2.putText(canvas, text, (x, baseline), _FONT, _FONT_SCALE, _TEXT, 1, cv2.LINE_AA)


def colorbar(
    height: int, labels: tuple[str, str] = ("0", "1"), colormap: int = cv2.COLORMAP_TURBO
) -> np.ndarray:
    """A vertical colour scale ``height`` pixels tall: :func:`colorize`'s colours from 1 (top) to 0
    (bottom), the two ends labelled ``labels`` (low, high), on the overview's background."""
    low, high = labels
    text_w = max(_text_size(low)[0], _text_size(high)[0])
    text_h = _text_size("0")[1]
    canvas = np.full((height, _BAR_WIDTH + 2 * _MARGIN + text_w, 3), _BACKGROUND, np.uint8)
    ramp = np.repeat(np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None], _BAR_WIDTH, axis=1)
    canvas[:, :_BAR_WIDTH] = colorize(ramp, colormap)
    _put_text(canvas, high, _BAR_WIDTH + _MARGIN, text_h)
    _put_text(canvas, low, _BAR_WIDTH + _MARGIN, height - 1)
    return canvas


def swatch(height: int, color: tuple[int, int, int], label: str) -> np.ndarray:
    """A legend entry ``height`` pixels tall: a square of ``color`` and ``label`` beside it."""
    side = min(height, _BAR_WIDTH)
    text_w, text_h = _text_size(label)
    canvas = np.full((height, side + 2 * _MARGIN + text_w, 3), _BACKGROUND, np.uint8)
    top = (height - side) // 2
    canvas[top : top + side, :side] = color
    _put_text(canvas, label, side + _MARGIN, (height + text_h) // 2)
    return canvas


def overview(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    *,
    column_labels: Sequence[str] | None = None,
    max_columns: int = 8,
    thumb_width: int = 256,
    legends: Mapping[str, Legend] | None = None,
) -> np.ndarray:
    """One labelled picture of a run: one row per named quantity, one column per frame.

    Every row holds one ``uint8`` image (gray or RGB) per frame, all rows the same number. Long videos
    show at most ``max_columns`` evenly spaced frames; thumbnails are at most ``thumb_width`` wide and keep
    the aspect ratio of the first image. ``legends`` maps a row's label to its legend (e.g. a
    :func:`colorbar`), drawn at the row's right end at the thumbnails' height. Returns ``(H, W, 3)`` RGB
    ``uint8``.
    """
    if not rows or not rows[0][1]:
        raise ValueError("overview needs at least one row with at least one image")
    count = len(rows[0][1])
    if any(len(images) != count for _, images in rows):
        raise ValueError(f"every row must have {count} images, got {[len(images) for _, images in rows]}")
    if column_labels is not None and len(column_labels) != count:
        raise ValueError(f"expected {count} column labels, got {len(column_labels)}")
    picked = spread_indices(count, max_columns)

    height, width = rows[0][1][0].shape[:2]
    cell_w = min(width, thumb_width)
    cell_h = max(1, round(height * cell_w / width))
    text_h = _text_size("Ag")[1]
    label_w = max(_text_size(label)[0] for label, _ in rows) + 2 * _MARGIN
    header_h = text_h + 2 * _MARGIN if column_labels is not None else 0
    drawn = {label: legend(cell_h) for label, legend in (legends or {}).items()}
    legend_w = max((image.shape[1] + _GAP for image in drawn.values()), default=0)

    grid_w = label_w + len(picked) * (cell_w + _GAP)
    canvas = np.full((header_h + len(rows) * (cell_h + _GAP), grid_w + legend_w, 3), _BACKGROUND, np.uint8)
    for j, t in enumerate(picked):
        x = label_w + j * (cell_w + _GAP)
        if column_labels is not None:
            _put_text(canvas, column_labels[t], x, header_h - _MARGIN)
        for i, (_, images) in enumerate(rows):
            y = header_h + i * (cell_h + _GAP)
            canvas[y : y + cell_h, x : x + cell_w] = _thumbnail(_numpy(images[t]), cell_w, cell_h)
    for i, (label, _) in enumerate(rows):
        y = header_h + i * (cell_h + _GAP)
        _put_text(canvas, label, _MARGIN, y + (cell_h + text_h) // 2)
        if label in drawn:
            legend = drawn[label]
            canvas[y : y + cell_h, grid_w : grid_w + legend.shape[1]] = legend
    return canvas


def side_by_side(panels: Sequence[tuple[str, np.ndarray]], legend: Legend | None = None) -> np.ndarray:
    """Labelled images of one size in a row: each with its label above and ``legend`` at its right.
    Returns ``(H, W, 3)`` RGB ``uint8``."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    height, width = panels[0][1].shape[:2]
    if any(image.shape[:2] != (height, width) for _, image in panels):
        raise ValueError(
            f"every panel must be {height}x{width}, got {[image.shape[:2] for _, image in panels]}"
        )
    header_h = _text_size("Ag")[1] + 2 * _MARGIN
    legend_image = None if legend is None else legend(height)
    panel_w = width + (0 if legend_image is None else legend_image.shape[1] + _GAP)
    canvas = np.full((header_h + height, len(panels) * (panel_w + _GAP) - _GAP, 3), _BACKGROUND, np.uint8)
    for j, (label, image) in enumerate(panels):
        x = j * (panel_w + _GAP)
        _put_text(canvas, label, x, header_h - _MARGIN)
        canvas[header_h:, x : x + width] = _rgb(_numpy(image))
        if legend_image is not None:
            canvas[header_h:, x + width + _GAP : x + panel_w] = legend_image
    return canvas


def write_mp4(path: str | Path, frames: Iterable[Array], fps: float) -> Path:
    """An H.264 video of ``uint8`` RGB frames, all of one size, creating parent folders.

    yuv420p with even sizes is what every player opens (an odd size gets one row or column of background
    more). The file is deterministic: x264 on one thread (its output depends on the thread count) and
    ``bitexact`` muxing (no encoder version string in the file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=None,
        macro_block_size=1,  # sizes are made even here; imageio would otherwise rescale to multiples of 16
        ffmpeg_log_level="error",
        output_params=["-crf", str(_CRF), "-threads", "1", "-fflags", "+bitexact", "-flags", "+bitexact"],
    )
    try:
        for frame in frames:
            writer.append_data(_even(_rgb(_numpy(frame))))
    finally:
        writer.close()
    return path


def _even(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    return np.pad(image, pad, constant_values=_BACKGROUND) if height % 2 or width % 2 else image


def save_safetensors(
    path: str | Path, tensors: Mapping[str, Array], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors or arrays as safetensors, keeping their dtypes (bool stays bool); creates parent folders.

    Each tensor is written straight from its memory (safetensors' own writer first copies the whole file
    into one buffer), with the header's keys sorted, so equal inputs give equal bytes.
    """
    cpu = {
        name: x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        for name, x in tensors.items()
    }
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in cpu.items()}
    return save_safetensors_streamed(path, layout, ((name, 0, t) for name, t in cpu.items()), metadata)


def save_safetensors_streamed(
    path: str | Path,
    layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    blocks: Iterable[tuple[str, int, Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a safetensors file whose tensors arrive as row blocks, never all in memory at once.

    ``layout`` gives each tensor's dtype and full shape; ``blocks`` yields ``(name, first row, rows)``
    until every row of every tensor has come. Tensor order and padding are safetensors' own; the header's
    keys are sorted (safetensors serialises metadata from a hash map, so its order, hence the file's
    bytes, would change from call to call).
    """
    # the data order is safetensors' own (by dtype, then name): ask it on one-element stand-ins
    order = _data_order({name: dtype for name, (dtype, _) in layout.items()})
    header: dict[str, object] = {}
    offset = 0
    starts = {}
    for name in order:
        dtype, shape = layout[name]
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        starts[name] = offset
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text = text.ljust(-(-len(text) // 8) * 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = dict.fromkeys(layout, 0)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        base = f.tell()
        f.truncate(base + offset)
        for name, first_row, rows in blocks:
            dtype, shape = layout[name]
            rows = rows.detach().cpu().to(dtype).contiguous()
            row_bytes = math.prod(shape[1:]) * rows.element_size()
            f.seek(base + starts[name] + first_row * row_bytes)
            # numpy has no bfloat16: write those bits as int16; either way straight from the tensor's memory
            f.write((rows.view(torch.int16) if dtype == torch.bfloat16 else rows).numpy().reshape(-1).data)
            written[name] += len(rows) if rows.ndim else 1
    incomplete = [name for name, (_, shape) in layout.items() if written[name] != (shape[0] if shape else 1)]
    if incomplete:
        path.unlink()
        raise ValueError(f"{path}: rows missing for {incomplete}")
    return path


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _data_order(dtypes: Mapping[str, torch.dtype]) -> list[str]:
    stand_ins = safetensors_save({name: torch.zeros(1, dtype=dtype) for name, dtype in dtypes.items()})
    length = struct.unpack("<Q", stand_ins[:8])[0]
    header = json.loads(stand_ins[8 : 8 + length])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


# x y z float32 and RGBA uint8, 16 bytes (4-aligned): the vertex layout of the PLY files trimesh writes and
# of the GLB's interleaved buffer
_VERTEX = np.dtype([("xyz", "<f4", 3), ("rgba", "u1", 4)])


def _vertex_rows(points: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(N, 3) points and (N, 3) uint8 colours as opaque :data:`_VERTEX` rows."""
    rows = np.empty(len(points), _VERTEX)
    rows["xyz"] = points
    rows["rgba"][:, :3] = colors
    rows["rgba"][:, 3] = 255
    return rows


def write_ply(path: str | Path, blocks: Iterable[tuple[np.ndarray, np.ndarray]], count: int) -> Path:
    """A binary coloured point cloud from ``blocks`` of (N, 3) float points and (N, 3) uint8 colours,
    ``count`` points in all, written block by block (the layout trimesh writes: x y z float, RGBA)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {count}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\nend_header\n"
    )
    written = 0
    with path.open("wb") as f:
        f.write(header.encode())
        for points, colors in blocks:
            rows = _vertex_rows(points, colors)
            f.write(rows.data)
            written += len(rows)
    if written != count:
        path.unlink()
        raise ValueError(f"{path}: {written} points written, {count} announced")
    return path


@dataclass
class GlbPart:
    """One node of a streamed GLB: ``count`` vertices (points, or line segments as vertex pairs with
    ``lines``) coming as ``blocks`` of (N, 3) float points and (N, 3) uint8 colours, inside ``low``..``high``
    (glTF wants a position accessor's bounds before its data). ``blocks`` is called once, when its turn
    to be written comes."""

    name: str
    count: int
    low: np.ndarray
    high: np.ndarray
    blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
    lines: bool = False


def write_glb(path: str | Path, parts: Sequence[GlbPart]) -> Path:
    """A binary glTF 2.0 scene of coloured point clouds and line sets, one node and mesh per part (named
    after it, identity transform), written part by part and block by block: memory holds one block, not
    the scene (trimesh builds a whole scene in float64 before writing it). Empty parts get no node (a glTF
    primitive needs vertices)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [part for part in parts if part.count > 0]
    views, accessors, meshes, nodes = [], [], [], []
    offset = 0
    for k, part in enumerate(parts):
        length = part.count * _VERTEX.itemsize
        views.append(
            {"buffer": 0, "byteOffset": offset, "byteLength": length, "byteStride": 16, "target": 34962}
        )
        accessors.append({
            "bufferView": k, "byteOffset": 0, "componentType": 5126, "count": part.count, "type": "VEC3",
            "min": [float(v) for v in np.asarray(part.low, np.float32)],
            "max": [float(v) for v in np.asarray(part.high, np.float32)],
        })  # fmt: skip
        accessors.append(
            {
                "bufferView": k,
                "byteOffset": 12,
                "componentType": 5121,
                "normalized": True,
                "count": part.count,
                "type": "VEC4",
            }
        )
        mode = 1 if part.lines else 0  # LINES or POINTS
        meshes.append(
            {
                "name": part.name,
                "primitives": [{"attributes": {"POSITION": 2 * k, "COLOR_0": 2 * k + 1}, "mode": mode}],
            }
        )
        nodes.append({"name": part.name, "mesh": k})
        offset += length
    document = {
        "asset": {"version": "2.0", "generator": "easi3r"},
        "scene": 0,
        "scenes": [{"nodes": list(range(len(nodes)))}],
        "nodes": nodes,
        "meshes": meshes,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned; JSON pads with spaces
    total = 12 + 8 + len(text) + 8 + offset
    with path.open("wb") as f:
        f.write(struct.pack("<4sII", b"glTF", 2, total))
        f.write(struct.pack("<I4s", len(text), b"JSON") + text)
        f.write(struct.pack("<I4s", offset, b"BIN\0"))
        for part in parts:
            written = 0
            for points, colors in part.blocks():
                rows = _vertex_rows(points, colors)
                f.write(rows.data)
                written += len(rows)
            if written != part.count:
                f.close()
                path.unlink()
                raise ValueError(f"{path}: part {part.name} wrote {written} vertices, {part.count} announced")
    return path
