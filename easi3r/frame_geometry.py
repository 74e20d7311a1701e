"""Where the pixels of a source frame land in the network input, for every preprocessing mode.

:func:`easi3r.frames.preprocess_image` resizes and crops (or pads) each frame; masks and ground truth made
at the source's size must follow exactly, and masks made on the network's pixels must find their way
back. :func:`network_geometry` is that integer arithmetic, tested against the preprocessing itself;
:func:`to_network_grid` resamples a per-pixel map onto the network grid with it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["network_geometry", "to_network_grid"]

_PATCH = 16  # dust3r mode: the network input is cropped to multiples of this
_VGGT_PATCH = 14  # vggt modes: sides are multiples of this

Geometry = tuple[tuple[int, int], "tuple[int, int, int, int] | None", tuple[int, int]]


def network_geometry(
    width: int, height: int, size: int, crop: bool = True, square_ok: bool = False, mode: str = "dust3r"
) -> Geometry:
    """``(resized (W, H), box or None, final (W, H))`` that :func:`easi3r.frames.preprocess_image` applies
    to a ``width × height`` image: the image is resized to ``resized``, then the ``box`` (x0, y0, x1, y1) of
    the resized image is kept, or, without a box, the resized image is scaled to ``final``. A box may reach
    outside the resized image: that is the padding of ``vggt_pad`` (where no source pixel lands)."""
    if mode != "dust3r":
        return _vggt_geometry(width, height, size, pad=mode == "vggt_pad")
    if size == 224:
        # the reference's 224 branch: short side to 224, then the centred square
        long_side = round(size * max(width / height, height / width))
        resized = _long_side_size(width, height, long_side)
        cx, cy = resized[0] // 2, resized[1] // 2
        half = min(cx, cy)
        return resized, (cx - half, cy - half, cx + half, cy + half), (2 * half, 2 * half)
    resized = _long_side_size(width, height, size)
    cx, cy = resized[0] // 2, resized[1] // 2
    halfw, halfh = ((2 * cx) // _PATCH) * 8, ((2 * cy) // _PATCH) * 8
    if resized[0] == resized[1] and not square_ok:
        halfh = (3 * halfw // 4) // 8 * 8
    final = (2 * halfw, 2 * halfh)
    if not crop:
        return resized, None, final
    return resized, (cx - halfw, cy - halfh, cx + halfw, cy + halfh), final


def _vggt_geometry(width: int, height: int, size: int, pad: bool) -> Geometry:
    """VGGT's crop mode (width ``size``, height to a multiple of 14, centre-cropped to ``size``) or pad
    mode (long side ``size``, centred on a ``size²`` square)."""
    if pad and height > width:
        resized = (round(width * (size / height) / _VGGT_PATCH) * _VGGT_PATCH, size)
    else:
        resized = (size, round(height * (size / width) / _VGGT_PATCH) * _VGGT_PATCH)
    if pad:
        x0, y0 = -((size - resized[0]) // 2), -((size - resized[1]) // 2)
        return resized, (x0, y0, x0 + size, y0 + size), (size, size)
    top = max(0, (resized[1] - size) // 2)
    final = (resized[0], min(resized[1], size))
    return resized, (0, top, final[0], top + final[1]), final


def to_network_grid(
    values: NDArray,
    source_size: tuple[int, int],
    size: int,
    crop: bool,
    square_ok: bool,
    network_size: tuple[int, int],
    mode: str = "dust3r",
) -> NDArray:
    """A per-pixel map ``(H, W)`` (mask or depth) of a frame whose file is ``source_size`` (W, H),
    resized and cropped like the frame was, with nearest-neighbour sampling (labels and depths must not
    be blended); the result is ``network_size`` (H, W). Padding (``vggt_pad``) is 0: static, or no depth.

    A map of another resolution than its frame is first resized to the frame's; a frame that the loader
    resized to the first frame's size (mixed sizes in one sequence) is followed the same way.
    """
    is_mask = values.dtype == np.bool_
    image = Image.fromarray(values.astype(np.uint8) if is_mask else values.astype(np.float32))
    nearest = Image.Resampling.NEAREST
    if image.size != tuple(source_size):
        image = image.resize(tuple(source_size), nearest)
    resized, box, final = network_geometry(*source_size, size, crop, square_ok, mode)
    image = image.resize(resized, nearest)
    image = image.crop(box) if box is not None else image.resize(final, nearest)
    target = (network_size[1], network_size[0])
    if image.size != target:
        image = image.resize(target, nearest)
    out = np.asarray(image)
    return out.astype(bool) if is_mask else out


def _long_side_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    longest = max(width, height)
    return round(width * long_side / longest), round(height * long_side / longest)
