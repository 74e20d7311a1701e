"""The videos (overlays.mp4, maps.mp4) and the masks at the source resolution, read back with the tools
their users read them with: imageio for the videos, PIL for the masks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from easi3r import api, writers
from easi3r.strategies.exporters import MaskExporter, to_source
from easi3r.types import Frames

FRAMES = Path(__file__).parent / "data" / "frames"
COUNT = 3


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def read_video(path: Path) -> list[np.ndarray]:
    reader = imageio.get_reader(path)
    try:
        return [np.asarray(frame) for frame in reader]
    finally:
        reader.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe on the first frames of tests/data/frames, writing the videos and source-size masks."""
    out = tmp_path_factory.mktemp("run") / "out"
    api.run(
        FRAMES,
        "tiny",
        out,
        [
            f"frames.max_frames={COUNT}",
            "align.name=none",
            "export.exporters=[{name: masks, resolution: source}, overlays, overlays_video, maps_video]",
        ],
    )
    return out


def test_overlays_video_shows_the_overlays(tiny_run: Path) -> None:
    frames = read_video(tiny_run / "overlays.mp4")
    first = read_png(tiny_run / "overlays" / "0000.png")
    assert len(frames) == COUNT and all(frame.shape == first.shape for frame in frames)
    # H.264 is lossy: the frame is close to the PNG, not equal
    assert np.abs(frames[0].astype(np.int16) - first).mean() < 4
    reader = imageio.get_reader(tiny_run / "overlays.mp4")
    meta = reader.get_meta_data()
    reader.close()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 10


def test_maps_video_has_six_labelled_panels(tiny_run: Path) -> None:
    frames = read_video(tiny_run / "maps.mp4")
    assert len(frames) == COUNT
    height, width = frames[0].shape[:2]
    assert height % 2 == 0 and width % 2 == 0
    assert width > 6 * 256 and height > 144  # six 256 × 144 maps, with labels and colour bars


def test_videos_are_deterministic(tiny_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    api.run(
        FRAMES,
        "tiny",
        again,
        [f"frames.max_frames={COUNT}", "align.name=none", "export.exporters=[overlays_video, maps_video]"],
    )
    for name in ("overlays.mp4", "maps.mp4"):
        assert (again / name).read_bytes() == (tiny_run / name).read_bytes()


def test_source_masks_have_the_source_size(tiny_run: Path) -> None:
    network = read_png(tiny_run / "overlays" / "0000.png").shape[:2]
    for t in range(COUNT):
        with Image.open(FRAMES / f"{t:05d}.jpg") as source:
            size = source.size
        for name in (f"dynamic_mask_{t:04d}.png", f"enlarged_dynamic_mask_{t:04d}.png"):
            with Image.open(tiny_run / "masks" / name) as mask:
                assert mask.size == size and mask.mode == "L"
                assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert network != size[::-1]


def cropped_result(mask: np.ndarray, source: tuple[int, int], size: int) -> SimpleNamespace:
    """What the masks exporter reads of a run: the frames (network and source size), recipe and masks."""
    height, width = mask.shape
    return SimpleNamespace(
        frames=Frames(images=torch.zeros(1, 3, height, width), paths=["a.png"], source_sizes=[source]),
        recipe=OmegaConf.create({"frames": {"size": size, "crop": True, "square_ok": False}}),
        masks=SimpleNamespace(masks=torch.from_numpy(mask[None])),
    )


def test_source_mask_inside_the_crop_is_the_network_mask_and_the_border_is_static(tmp_path: Path) -> None:
    # 512 × 296 at size 256: resized to 256 × 148, cropped to 256 × 144 (rows 2..145), so 2 resized rows,
    # 4 source rows, above and below were never seen by the network
    mask = np.random.default_rng(0).random((144, 256)) > 0.5
    result = cropped_result(mask, (512, 296), 256)
    source = to_source(mask, result, 0)
    assert source.shape == (296, 512)
    assert not source[:4].any() and not source[-4:].any()
    np.testing.assert_array_equal(source[4:-4], writers.upsample_nearest(mask, (288, 512)))

    MaskExporter(dilate=0, resolution="source").write(result, result.masks, tmp_path)
    with Image.open(tmp_path / "dynamic_mask_0000.png") as written:
        assert written.size == (512, 296)
        np.testing.assert_array_equal(np.asarray(written) == 255, source)
