"""Frame loading and preprocessing, matching the reference loader (method.md §0, reference-notes §5.1).

A source is a folder of images (sorted by file name), an explicit list of image files, or a video file. Every
frame is turned upright (EXIF orientation) and into 8-bit RGB, resized so that its long side is ``size``
(LANCZOS when shrinking, BICUBIC otherwise, sizes rounded), then centre-cropped to multiples of 16
(``crop=False``: resized to that size instead), and finally mapped to [-1, 1] with ``(x - 0.5) / 0.5``.

``size == 224`` follows the reference's special case: the *short* side is resized to 224 (by asking for a long
side of ``round(224 · aspect)``) and the centred 224 × 224 square is kept; ``crop`` and ``square_ok`` have no
effect there, as in the reference.

Deviations from the reference, each because the reference misbehaves in that case:

* 16-bit grey images are scaled to 8 bits (the reference's ``convert("RGB")`` clips everything above 255 to
  white);
* frames whose network size differs from the first frame's are resized to it, with one warning (the reference
  silently assumes one size for the whole sequence);
* for a square image the 3/4 height is rounded down to a multiple of 16 (identical to the reference at 512,
  where the reference gives 384; at sizes like 240 the reference's 180 would not fit the 16-pixel patches);
* hidden files (names starting with ".") in a folder are skipped, so that e.g. macOS ``._0001.jpg`` side files
  are not read as frames;
* videos are read with imageio's bundled ffmpeg instead of OpenCV, and the reference's ``fps`` subsampling is
  expressed by ``stride`` (keep every k-th decoded frame).

``mode`` chooses the preprocessing (recipe key ``frames.mode``): ``"dust3r"`` is the above; ``"vggt_crop"``
and ``"vggt_pad"`` follow VGGT's ``load_and_preprocess_images`` (modes "crop" and "pad") with ``size`` as its
target (518 for VGGT), giving sides that are multiples of 14 (:data:`VGGT_PATCH`):

* ``vggt_crop``: the width becomes ``size`` and the height ``round(h · size / w / 14) · 14`` (BICUBIC, also when
  shrinking), then a height above ``size`` is centre-cropped to ``size``;
* ``vggt_pad``: the long side becomes ``size`` and the other ``round(· / 14) · 14`` (BICUBIC), then the image is
  centred on a white ``size × size`` square;
* an RGBA image is composited onto white first, as VGGT does; ``crop`` and ``square_ok`` do not apply.

Where these modes differ from VGGT's function: frames are turned upright from their EXIF orientation, 16-bit
grey is scaled as above, and frames whose size differs from the first frame's are resized to it (VGGT pads
them with white to the largest size).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from easi3r.errors import Easi3RError, FrameError, RecipeError
from easi3r.estimate import available_memory
from easi3r.types import Frames

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif"})

# 16-bit grey modes Pillow may report; all hold unsigned 16-bit samples.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

_PATCH = 16
VGGT_PATCH = 14  # VGGT's patch size: the vggt_* modes give sides that are multiples of it
MODES = ("dust3r", "vggt_crop", "vggt_pad")


def load_frames(
    source: str | Path | Sequence[str | Path],
    *,
    size: int = 512,
    crop: bool = True,
    square_ok: bool = False,
    stride: int = 1,
    max_frames: int | None = None,
    mode: str = "dust3r",
) -> Frames:
    """Read and preprocess the frames of a folder, a list of image files or a video.

    ``stride`` keeps every k-th frame (counted from the first), then ``max_frames`` keeps the first ones of
    those; ``mode`` is one of :data:`MODES` (see the module doc). Raises :class:`FrameError` (one line naming
    the path) for anything that cannot be read or leaves fewer than two frames.
    """
    _check_options(size, stride, max_frames, mode)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FrameError(f"{path}: no such file or folder")
        if path.is_dir():
            files = list_images(path)
            label = str(path)
        elif path.suffix.lower() in VIDEO_EXTENSIONS:
            return _load_video(path, size, crop, square_ok, stride, max_frames, mode)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            files, label = [path], str(path)
        else:
            raise FrameError(
                f"{path}: not a folder, image ({_extensions(IMAGE_EXTENSIONS)}) "
                f"or video ({_extensions(VIDEO_EXTENSIONS)})"
            )
    else:
        files = [Path(p) for p in source]
        if not files:
            raise FrameError("no frames given: the list of image files is empty")
        for file in files:
            if not file.is_file():
                raise FrameError(f"{file}: no such image file")
        label = f"the list starting with {files[0]}"

    files = _subsample(files, stride, max_frames)
    _check_count(len(files), label)
    images: list[Image.Image] = []
    source_sizes: list[tuple[int, int]] = []
    for file in files:
        upright = _read_image(file, white_background=mode != "dust3r")
        if not images:  # the first frame's shape stands for all: refuse before the resize allocates
            _check_memory(upright.size, size, len(files), str(file))
        source_sizes.append(upright.size)
        images.append(_preprocess_named(upright, str(file), size, crop, square_ok, mode))
    return _assemble(images, [str(f) for f in files], source_sizes)


def load_frames_as(source: str | Path | Sequence[str | Path], section: Mapping[str, Any]) -> Frames:
    """:func:`load_frames` with the options of a recipe's ``frames`` section."""
    return load_frames(
        source,
        size=section["size"],
        crop=section["crop"],
        square_ok=section["square_ok"],
        stride=section["stride"],
        max_frames=section["max_frames"],
        mode=section.get("mode", "dust3r"),
    )


def preprocess_image(
    img: Image.Image, size: int = 512, crop: bool = True, square_ok: bool = False, mode: str = "dust3r"
) -> Image.Image:
    """Upright RGB image resized and centre-cropped (or resized, ``crop=False``) to the network size;
    ``mode`` ``vggt_crop``/``vggt_pad``: VGGT's preprocessing instead (module doc)."""
    if mode != "dust3r":
        return _preprocess_vggt(_upright_rgb(img, white_background=True), size, pad=mode == "vggt_pad")
    img = _upright_rgb(img)
    width, height = img.size
    if size == 224:
        # The reference's 224 branch: a long side chosen so the short side lands on 224, then a square crop.
        img = _resize_long_side(img, round(size * max(width / height, height / width)))
        cx, cy = img.size[0] // 2, img.size[1] // 2
        half = min(cx, cy)
        return img.crop((cx - half, cy - half, cx + half, cy + half))

    img = _resize_long_side(img, size)
    width, height = img.size
    cx, cy = width // 2, height // 2
    halfw, halfh = ((2 * cx) // _PATCH) * 8, ((2 * cy) // _PATCH) * 8
    if width == height and not square_ok:
        # Square frames are cut to 3/4 height like the reference; kept on the 16-pixel grid (see module doc).
        halfh = (3 * halfw // 4) // 8 * 8
    if halfw < 8 or halfh < 8:
        raise FrameError(
            f"a {width}x{height} image leaves no 16x16 patch at size {size} (aspect ratio too extreme)"
        )
    if crop:
        return img.crop((cx - halfw, cy - halfh, cx + halfw, cy + halfh))
    return img.resize((2 * halfw, 2 * halfh), Image.Resampling.LANCZOS)


def _preprocess_vggt(img: Image.Image, size: int, *, pad: bool) -> Image.Image:
    """VGGT's resize (one side ``size``, the other rounded to a multiple of 14), then its crop or pad."""
    width, height = img.size
    if pad and height > width:
        new_width, new_height = round(width * (size / height) / VGGT_PATCH) * VGGT_PATCH, size
    else:
        new_width, new_height = size, round(height * (size / width) / VGGT_PATCH) * VGGT_PATCH
    if new_width < VGGT_PATCH or new_height < VGGT_PATCH:
        raise FrameError(
            f"a {width}x{height} image leaves no {VGGT_PATCH}x{VGGT_PATCH} patch at size {size} "
            "(aspect ratio too extreme)"
        )
    img = img.resize((new_width, new_height), Image.Resampling.BICUBIC)
    if not pad:
        if new_height <= size:
            return img
        top = (new_height - size) // 2
        return img.crop((0, top, new_width, top + size))
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(img, ((size - new_width) // 2, (size - new_height) // 2))
    return square


def to_network_tensor(img: Image.Image) -> Tensor:
    """(3, H, W) float32 in [-1, 1]: the reference's ToTensor then Normalize(0.5, 0.5), same float ops."""
    pixels = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8))
    x = pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return x.sub(0.5).div(0.5)


def _check_options(size: int, stride: int, max_frames: int | None, mode: str = "dust3r") -> None:
    if mode not in MODES:
        raise Easi3RError(f"frames mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(size, int) or size < _PATCH:
        raise Easi3RError(f"frame size must be an integer >= {_PATCH}, got {size!r}")
    if mode != "dust3r" and size % VGGT_PATCH:
        raise Easi3RError(
            f"frames mode {mode} needs a size that is a multiple of {VGGT_PATCH} (VGGT uses 518), got {size}"
        )
    if not isinstance(stride, int) or stride < 1:
        raise Easi3RError(f"frame stride must be an integer >= 1, got {stride!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise Easi3RError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")


def _extensions(exts: frozenset[str]) -> str:
    return "/".join(sorted(e.lstrip(".") for e in exts))


def list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` in sorted order (the order frames are read in); hidden files skipped."""
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise FrameError(f"{folder}: cannot list folder ({_one_line(exc)})") from None
    files = sorted(
        folder / name
        for name in names
        if not name.startswith(".")
        and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        and (folder / name).is_file()
    )
    if not files:
        raise FrameError(f"{folder}: no images ({_extensions(IMAGE_EXTENSIONS)}) in folder")
    return files


def _subsample(items: list[Path], stride: int, max_frames: int | None) -> list[Path]:
    kept = items[::stride]
    return kept if max_frames is None else kept[:max_frames]


_BYTES_PER_PIXEL = 4 + 12  # a resized frame is kept as a PIL RGB(X) image, then as a float32 tensor


def _check_memory(source_size: tuple[int, int], size: int, count: int, name: str) -> None:
    """Refuse a ``size`` at which ``count`` frames shaped like ``source_size`` cannot fit in memory."""
    width, height = source_size
    long_side = round(size * max(width / height, height / width)) if size == 224 else size
    scale = long_side / max(width, height)
    needed = count * round(width * scale) * round(height * scale) * _BYTES_PER_PIXEL
    available = available_memory()
    if available is not None and needed > available:
        raise RecipeError(
            f"frames.size={size} makes {name} {round(width * scale)}x{round(height * scale)} pixels: "
            f"{count} such frame(s) need {needed / 1024**3:.3g} GiB, more than the "
            f"{available / 1024**3:.1f} GiB available; lower frames.size (the reference uses 512)"
        )


def _check_count(count: int, label: str) -> None:
    if count < 2:
        raise FrameError(f"need at least 2 frames, got {count} from {label}")


def _one_line(exc: BaseException) -> str:
    # Decoder messages (ffmpeg especially) can span many lines; the CLI contract is a single line.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _read_image(path: Path, white_background: bool = False) -> Image.Image:
    try:
        with Image.open(path) as img:
            # Decode now, inside the error handler: Pillow opens lazily and truncated files fail on load.
            img.load()
            return _upright_rgb(img, white_background)
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise FrameError(f"{path}: cannot read image ({_one_line(exc)})") from None


def _upright_rgb(img: Image.Image, white_background: bool = False) -> Image.Image:
    """EXIF orientation applied, then 8-bit RGB with alpha dropped (not composited), like the reference;
    ``white_background``: an RGBA image is composited onto white instead, like VGGT's loader."""
    img = ImageOps.exif_transpose(img)
    if white_background and img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit samples at 255; rescale the full 16-bit range instead.
        samples = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
        img = Image.fromarray(np.round(samples / 257.0).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        # Pillow warns when a palette with transparency goes straight to RGB; via RGBA the colours are equal.
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def _resize_long_side(img: Image.Image, long_side: int) -> Image.Image:
    longest = max(img.size)
    resample = Image.Resampling.LANCZOS if longest > long_side else Image.Resampling.BICUBIC
    # Same arithmetic as the reference (x · L / S, Python rounding) so sizes agree to the pixel.
    new_size = tuple(round(x * long_side / longest) for x in img.size)
    return img.resize(new_size, resample)


def _preprocess_named(
    img: Image.Image, name: str, size: int, crop: bool, square_ok: bool, mode: str
) -> Image.Image:
    try:
        return preprocess_image(img, size, crop, square_ok, mode)
    except FrameError as exc:
        raise FrameError(f"{name}: {exc}") from None


def _iter_video(path: Path) -> Iterator[np.ndarray]:
    # GIFs go through Pillow (palette frames → RGB); everything else through imageio's bundled ffmpeg binary,
    # which needs no system ffmpeg (PyAV is not a dependency).
    if path.suffix.lower() == ".gif":
        with iio.imopen(path, "r", plugin="pillow") as reader:
            yield from reader.iter(mode="RGB")
    else:
        with iio.imopen(path, "r", plugin="FFMPEG") as reader:
            yield from reader.iter()


def _load_video(
    path: Path, size: int, crop: bool, square_ok: bool, stride: int, max_frames: int | None, mode: str
) -> Frames:
    images: list[Image.Image] = []
    names: list[str] = []
    source_sizes: list[tuple[int, int]] = []
    index = -1
    try:
        for index, frame in enumerate(_iter_video(path)):
            if index % stride:
                continue
            rgb = Image.fromarray(np.asarray(frame, dtype=np.uint8)[..., :3])
            _check_memory(rgb.size, size, len(images) + 1, f"{path}#{index}")  # the length is unknown
            source_sizes.append(rgb.size)
            names.append(f"{path}#{index}")
            images.append(_preprocess_named(rgb, names[-1], size, crop, square_ok, mode))
            if max_frames is not None and len(images) == max_frames:
                break  # stop decoding: long videos are never read further than needed
    except FrameError:
        raise
    except Exception as exc:  # the readers raise many unrelated types (OSError, RuntimeError, IndexError...)
        where = "" if index < 0 else f" after frame {index}"
        raise FrameError(f"{path}: cannot decode video{where} ({_one_line(exc)})") from None
    if index < 0:
        raise FrameError(f"{path}: video has no frames")
    _check_count(len(images), str(path))
    return _assemble(images, names, source_sizes)


def _assemble(images: list[Image.Image], names: list[str], source_sizes: list[tuple[int, int]]) -> Frames:
    """Stack into one tensor, bringing any frame whose network size differs to the first frame's size."""
    target = images[0].size
    resized = []
    for k, img in enumerate(images):
        if img.size != target:
            shrinking = img.size[0] * img.size[1] > target[0] * target[1]
            resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
            images[k] = img.resize(target, resample)
            resized.append(names[k])
    if resized:
        warnings.warn(
            f"{len(resized)} frame(s) had a different size and were resized to the first frame's "
            f"{target[0]}x{target[1]} (first: {resized[0]})",
            stacklevel=3,
        )
    # filled frame by frame: a list of per-frame tensors stacked at the end would hold the frames twice
    tensor = torch.empty(len(images), 3, target[1], target[0])
    for k, img in enumerate(images):
        tensor[k] = to_network_tensor(img)
    return Frames(images=tensor, paths=names, source_sizes=source_sizes)
