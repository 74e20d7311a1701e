"""Frame loading: sizes, interpolation, image modes, EXIF, mixed sizes, videos, errors, and the golden input."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from easi3r.errors import Easi3RError, FrameError
from easi3r.frames import load_frames, preprocess_image, to_network_tensor
from easi3r.types import Frames

DATA = Path(__file__).parent / "data"
FRAMES = DATA / "frames"
GOLDEN = DATA / "golden" / "net" / "reference.safetensors"


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_images(folder: Path, images: list[Image.Image], ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{k:05d}.{ext}" for k in range(len(images))]
    for img, path in zip(images, paths):
        img.save(path)
    return paths


def frame_error(source: object, **kwargs: object) -> str:
    """Load and return the FrameError message, checking the one-line contract."""
    with pytest.raises(FrameError) as info:
        load_frames(source, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(
    ("source", "size", "crop", "square_ok", "expected"),
    [
        ((854, 480), 512, True, False, (512, 288)),
        ((640, 480), 512, True, False, (512, 384)),
        ((1024, 436), 512, True, False, (512, 208)),
        ((512, 512), 512, True, False, (512, 384)),
        ((512, 512), 512, True, True, (512, 512)),
        ((480, 854), 512, True, False, (288, 512)),
        ((200, 100), 512, True, False, (512, 256)),
        ((1024, 436), 512, False, False, (512, 208)),
        ((854, 480), 256, True, False, (256, 144)),
        ((240, 240), 240, True, False, (240, 176)),
        ((854, 480), 224, True, False, (224, 224)),
        ((480, 854), 224, False, False, (224, 224)),
    ],
)
def test_network_sizes(
    source: tuple[int, int], size: int, crop: bool, square_ok: bool, expected: tuple[int, int]
) -> None:
    out = preprocess_image(Image.new("RGB", source, (90, 20, 200)), size, crop, square_ok)
    assert out.size == expected and out.mode == "RGB"
    assert out.size[0] % 16 == 0 and out.size[1] % 16 == 0


def test_interpolation_follows_reference() -> None:
    # Shrinking: LANCZOS to the rounded long-side size, then a centred crop (854x480 → 512x288 exactly).
    img = noise(854, 480)
    assert np.array_equal(
        np.asarray(preprocess_image(img, 512)), np.asarray(img.resize((512, 288), Image.Resampling.LANCZOS))
    )
    # Enlarging: BICUBIC (200x100 → 512x256, nothing cropped).
    small = noise(200, 100, seed=1)
    assert np.array_equal(
        np.asarray(preprocess_image(small, 512)),
        np.asarray(small.resize((512, 256), Image.Resampling.BICUBIC)),
    )


def test_no_crop_squeezes_instead_of_cutting() -> None:
    # A square image with a red top band: the 3/4-height crop cuts the band away, the no-crop resize keeps it.
    pixels = np.full((1000, 1000, 3), 128, np.uint8)
    pixels[:100] = (255, 0, 0)
    img = Image.fromarray(pixels)
    cropped = np.asarray(preprocess_image(img, 512, crop=True))
    squeezed = np.asarray(preprocess_image(img, 512, crop=False))
    assert cropped.shape == squeezed.shape == (384, 512, 3)
    assert tuple(cropped[0, 256]) == (128, 128, 128)
    assert squeezed[0, 256, 0] > 250 and squeezed[0, 256, 1] < 5


def test_to_network_tensor_range_and_channels() -> None:
    img = Image.new("RGB", (32, 16), (255, 0, 0))
    x = to_network_tensor(img)
    assert x.shape == (3, 16, 32) and x.dtype == torch.float32
    assert torch.all(x[0] == 1) and torch.all(x[1:] == -1)
    # Round trip through Frames.rgb(): the normalisation loses nothing at 8 bits.
    rgb = noise(32, 16)
    back = Frames(images=to_network_tensor(rgb)[None], paths=["x"]).rgb()[0]
    assert np.array_equal(back, np.asarray(rgb))


def test_real_frames() -> None:
    frames = load_frames(FRAMES)
    assert frames.images.shape == (12, 3, 288, 512) and frames.size == (288, 512)
    assert frames.images.dtype == torch.float32
    assert float(frames.images.min()) >= -1 and float(frames.images.max()) <= 1
    assert [Path(p).name for p in frames.paths] == [f"{k:05d}.jpg" for k in range(12)]
    assert frames.source_sizes == [(854, 480)] * 12


def test_golden_input() -> None:
    golden = load_file(str(GOLDEN))
    files = [FRAMES / f"{k:05d}.jpg" for k in range(5)]
    frames = load_frames(files, size=256)
    expected = torch.from_numpy(golden["input/img"])
    assert frames.images.shape == expected.shape == (5, 3, 144, 256)
    assert float((frames.images - expected).abs().max()) <= 1e-6
    assert np.array_equal(golden["input/true_shape"], np.array([frames.size] * 5, np.int32))
    # The folder with a cap gives the same frames.
    assert torch.equal(load_frames(FRAMES, size=256, max_frames=5).images, frames.images)


def test_folder_listing(tmp_path: Path) -> None:
    for name in ["b.png", "a.PNG", "c.JPeG", ".hidden.png"]:
        noise(64, 48).save(tmp_path / name, format="JPEG" if name.endswith("JPeG") else "PNG")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub.png").mkdir()
    frames = load_frames(tmp_path, size=64)
    assert [Path(p).name for p in frames.paths] == ["a.PNG", "b.png", "c.JPeG"]
    assert frames.size == (48, 64)


def test_stride_and_cap(tmp_path: Path) -> None:
    write_images(tmp_path, [noise(64, 48, seed=k) for k in range(7)])
    frames = load_frames(tmp_path, size=64, stride=2)
    assert [Path(p).name for p in frames.paths] == ["00000.png", "00002.png", "00004.png", "00006.png"]
    frames = load_frames(tmp_path, size=64, stride=3, max_frames=2)
    assert [Path(p).name for p in frames.paths] == ["00000.png", "00003.png"]


def test_exif_orientation(tmp_path: Path) -> None:
    # Stored landscape, left half red, right half blue; orientation 6 = rotate 90° clockwise for display,
    # so the displayed portrait frame is red on top and blue below.
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path in paths:
        Image.fromarray(pixels).save(path, exif=exif, quality=95)
    frames = load_frames(paths, size=64)
    assert frames.size == (64, 32) and frames.source_sizes == [(32, 64), (32, 64)]
    rgb = frames.rgb()[0].astype(int)
    assert rgb[:28, :, 0].mean() > 240 and rgb[:28, :, 2].mean() < 15
    assert rgb[36:, :, 2].mean() > 240 and rgb[36:, :, 0].mean() < 15


@pytest.mark.filterwarnings("error")
def test_image_modes(tmp_path: Path) -> None:
    size = (64, 48)
    palette = Image.new("P", size, 0)
    palette.putpalette([10, 200, 30] * 256)
    palette.info["transparency"] = 0
    cases: dict[str, tuple[Image.Image, tuple[int, int, int]]] = {
        "grey": (Image.new("L", size, 77), (77, 77, 77)),
        "bilevel": (Image.new("1", size, 1), (255, 255, 255)),
        "rgba": (Image.new("RGBA", size, (10, 20, 30, 0)), (10, 20, 30)),
        "grey_alpha": (Image.new("LA", size, (99, 0)), (99, 99, 99)),
        "palette": (palette, (10, 200, 30)),
        # 16-bit: 32896 = 128·257 is mid-grey, not clipped to white as Pillow's own conversion would do.
        "sixteen": (Image.fromarray(np.full(size[::-1], 32896, np.uint16)), (128, 128, 128)),
    }
    for name, (img, colour) in cases.items():
        paths = write_images(tmp_path / name, [img, img])
        frames = load_frames(paths, size=64)
        assert frames.size == (48, 64), name
        assert np.array_equal(frames.rgb()[0], np.broadcast_to(np.array(colour, np.uint8), (48, 64, 3))), name


def test_mixed_sizes_resized_with_one_warning(tmp_path: Path) -> None:
    paths = write_images(tmp_path, [noise(854, 480), noise(640, 480, seed=1), noise(1024, 436, seed=2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = load_frames(paths, size=512)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 frame(s)" in messages[0] and "512x288" in messages[0]
    assert frames.images.shape == (3, 3, 288, 512)
    assert frames.source_sizes == [(854, 480), (640, 480), (1024, 436)]


def write_video(path: Path, levels: list[int]) -> None:
    frames = np.stack([np.full((48, 64, 3), level, np.uint8) for level in levels])
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=100, loop=0)
    else:
        iio.imwrite(path, frames, fps=10, plugin="FFMPEG")


def test_video(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    levels = [20, 50, 80, 110, 140, 170, 200]
    write_video(clip, levels)
    frames = load_frames(clip, size=64)
    assert frames.images.shape == (7, 3, 48, 64)
    assert frames.paths == [f"{clip}#{k}" for k in range(7)]
    assert frames.source_sizes == [(64, 48)] * 7
    means = frames.rgb().reshape(7, -1).mean(axis=1)
    assert np.allclose(means, levels, atol=4)

    frames = load_frames(str(clip), size=64, stride=2, max_frames=3)
    assert frames.paths == [f"{clip}#0", f"{clip}#2", f"{clip}#4"]
    assert np.allclose(frames.rgb().reshape(3, -1).mean(axis=1), levels[0:6:2], atol=4)


def test_gif(tmp_path: Path) -> None:
    clip = tmp_path / "clip.gif"
    write_video(clip, [0, 128, 255])
    frames = load_frames(clip, size=64)
    assert frames.images.shape == (3, 3, 48, 64)
    assert np.allclose(frames.rgb().reshape(3, -1).mean(axis=1), [0, 128, 255], atol=2)


def test_missing_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert str(missing) in frame_error(missing)
    good = write_images(tmp_path / "ok", [noise(32, 32)])
    assert str(missing) in frame_error([good[0], missing])
    assert "empty" in frame_error([])


def test_folder_without_images(tmp_path: Path) -> None:
    assert str(tmp_path) in frame_error(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    assert "no images" in frame_error(tmp_path)


def test_unreadable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod does not stop root, so the listing failure is simulated.
    def refuse(path: object) -> list[str]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "listdir", refuse)
    message = frame_error(tmp_path)
    assert str(tmp_path) in message and "Permission denied" in message


def test_corrupt_images(tmp_path: Path) -> None:
    paths = write_images(tmp_path, [noise(64, 48), noise(64, 48, seed=1)], ext="jpg")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    message = frame_error([paths[0], garbage])
    assert str(garbage) in message and "cannot read image" in message
    # A truncated JPEG opens fine and fails only when decoded.
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    assert str(paths[1]) in frame_error(tmp_path)


def test_bad_videos(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    assert str(broken) in frame_error(broken)
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    assert str(empty) in frame_error(empty)
    one = tmp_path / "one.mp4"
    write_video(one, [100])
    assert frame_error(one) == f"need at least 2 frames, got 1 from {one}"


def test_too_few_frames(tmp_path: Path) -> None:
    write_images(tmp_path, [noise(64, 48, seed=k) for k in range(3)])
    assert frame_error(tmp_path, size=64, stride=3) == f"need at least 2 frames, got 1 from {tmp_path}"
    assert frame_error(tmp_path, size=64, max_frames=1).startswith("need at least 2 frames, got 1")
    single = tmp_path / "00000.png"
    assert frame_error(single) == f"need at least 2 frames, got 1 from {single}"


def test_unsupported_and_degenerate_files(tmp_path: Path) -> None:
    other = tmp_path / "frames.txt"
    other.write_text("x")
    assert str(other) in frame_error(other)
    paths = write_images(tmp_path / "thin", [noise(2000, 20), noise(2000, 20)])
    message = frame_error(paths, size=512)
    assert str(paths[0]) in message and "16x16" in message


def test_bad_options() -> None:
    for kwargs in [{"stride": 0}, {"max_frames": 0}, {"size": 8}]:
        with pytest.raises(Easi3RError):
            load_frames(FRAMES, **kwargs)  # type: ignore[arg-type]
