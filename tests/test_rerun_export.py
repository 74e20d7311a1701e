"""The ``rerun`` exporter: a run writes ``scene/recording.rrd``, read back with the rerun SDK's own RRD
reader; without rerun-sdk the exporter stops with one line saying how to install it."""

from __future__ import annotations

import sys
from collections import defaultdict

import pytest

from easi3r.cli import main
from easi3r.errors import Easi3RError
from easi3r.strategies.scene_exporters import RerunExporter

from .helpers import FRAMES

FRAME_COUNT = 3


@pytest.fixture(scope="module")
def columns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list]]:
    """entity path → column name → the values of every row logged on the ``frame`` timeline."""
    chunk = pytest.importorskip("rerun.chunk")
    out = tmp_path_factory.mktemp("rerun") / "out"
    code = main(
        [
            "run",
            str(FRAMES),
            "-o",
            str(out),
            "--recipe",
            "tiny",
            f"frames.max_frames={FRAME_COUNT}",
            "align.iters=5",
            "export.exporters=[rerun]",
        ]
    )
    assert code == 0
    path = out / "scene" / "recording.rrd"
    assert path.is_file()
    found: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for piece in chunk.RrdReader(path).stream():
        if "frame" not in piece.timeline_names:
            continue
        batch = piece.to_record_batch()
        for name in batch.schema.names:
            found[piece.entity_path][name] += batch.column(name).to_pylist()
    return found


def test_every_entity_is_logged_once_per_frame(columns: dict[str, dict[str, list]]) -> None:
    expected = {
        "/world/points/static": "Points3D:positions",
        "/world/points/dynamic": "Points3D:positions",
        "/world/camera": "Transform3D:translation",
        "/world/camera/image": "Image:buffer",
        "/world/camera/mask": "SegmentationImage:buffer",
    }
    for entity, component in expected.items():
        assert entity in columns, f"{entity} missing; found {sorted(columns)}"
        assert len(columns[entity][component]) == FRAME_COUNT
        assert set(columns[entity]["frame"]) == set(range(FRAME_COUNT))
    # the camera carries its pose and its intrinsics, each once per frame
    assert len(columns["/world/camera"]["Pinhole:image_from_camera"]) == FRAME_COUNT


def test_points_are_split_and_capped(columns: dict[str, dict[str, list]]) -> None:
    static = [len(p) for p in columns["/world/points/static"]["Points3D:positions"]]
    dynamic = [len(p) for p in columns["/world/points/dynamic"]["Points3D:positions"]]
    assert all(s > 0 for s in static)
    assert all(s + d <= 20_000 for s, d in zip(static, dynamic, strict=True))
    # the colours come with the points, one per point
    colors = [len(c) for c in columns["/world/points/static"]["Points3D:colors"]]
    assert colors == static


def test_image_and_mask_fit_the_pinhole(columns: dict[str, dict[str, list]]) -> None:
    width, height = columns["/world/camera"]["Pinhole:resolution"][0][0]
    images = columns["/world/camera/image"]["Image:buffer"]
    masks = columns["/world/camera/mask"]["SegmentationImage:buffer"]
    assert [len(b[0]) for b in images] == [int(width * height * 3)] * FRAME_COUNT
    assert [len(b[0]) for b in masks] == [int(width * height)] * FRAME_COUNT
    assert all(set(b[0]) <= {0, 1} for b in masks)


def test_missing_sdk_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rerun", None)  # makes `import rerun` raise ImportError
    with pytest.raises(Easi3RError) as caught:
        RerunExporter()
    assert str(caught.value) == "the rerun exporter needs rerun-sdk: pip install 'easi3r[rerun]'"
    assert "\n" not in str(caught.value)


def test_max_points_per_frame_must_be_positive() -> None:
    pytest.importorskip("rerun")
    with pytest.raises(ValueError, match="max_points_per_frame"):
        RerunExporter(max_points_per_frame=0)
