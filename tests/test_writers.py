"""The writers (pure image/file helpers) and the exporters that use them, on a small fake run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

from easi3r import writers
from easi3r.api import create_exporters
from easi3r.pipeline import PassResult, RunResult
from easi3r.plugins import registry, schema_fragments
from easi3r.recipes import load_recipe, validate_recipe
from easi3r.strategies.exporters import (
    MapExporter,
    MapVideoExporter,
    MaskExporter,
    OverlayExporter,
    OverlayVideoExporter,
)
from easi3r.types import DynamicMasks, Encoded, FrameMaps, Frames, PairOutputs

T, H, W, NH, NW, C = 3, 32, 48, 2, 3, 5
STATS = ("src_mean", "src_std", "ref_mean", "ref_std")


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def framed_hole() -> np.ndarray:
    """A filled rectangle with a hole in it: one outer and one hole border."""
    mask = np.zeros((H, W), bool)
    mask[6:20, 10:30] = True
    mask[10:14, 16:22] = False
    return mask


def blobby_mask(rng: np.random.Generator) -> np.ndarray:
    """:func:`framed_hole` plus scattered pixels, some touching it, some touching the image border."""
    return framed_hole() | (rng.random((H, W)) > 0.85)


def fake_masks() -> DynamicMasks:
    rng = np.random.default_rng(0)
    binary = np.stack([blobby_mask(rng), blobby_mask(rng), np.zeros((H, W), bool)])  # last frame empty
    maps = {name: torch.rand(T, NH, NW) for name in STATS}
    maps.update({f"{name}_raw": torch.rand(T, NH, NW, C) for name in STATS})
    return DynamicMasks(
        masks=torch.from_numpy(binary),
        dynamic_map=torch.rand(T, NH, NW),
        refined_map=torch.rand(T, NH, NW),
        threshold=0.5,
        maps=FrameMaps(maps=maps),
    )


def fake_result(masks: DynamicMasks | None) -> RunResult:
    pairs = torch.tensor([[0, 1], [1, 0], [1, 2], [2, 1]])
    return RunResult(
        recipe=OmegaConf.create({"export": {"dilate": 3}, "passes": {"masks_from": "pass1"}}),
        frames=Frames(images=torch.rand(T, 3, H, W) * 2 - 1, paths=[f"clip/{t:05d}.jpg" for t in range(T)]),
        pairs=pairs,
        encoded=Encoded(
            tokens=torch.zeros(T, NH * NW, 4),
            positions=torch.cartesian_prod(torch.arange(NH), torch.arange(NW)),
            grid=(NH, NW),
            image_size=(H, W),
        ),
        passes={"pass1": PassResult(PairOutputs(pairs), masks)},
    )


@pytest.fixture
def result():
    return fake_result(fake_masks())


# --- writers --------------------------------------------------------------------------------------


def test_write_png_round_trip_and_same_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for image in (
        rng.integers(0, 256, (H, W), dtype=np.uint8),
        rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
    ):
        first = writers.write_png(tmp_path / "a" / "b" / "x.png", image)
        np.testing.assert_array_equal(read_png(first), image)
        second = writers.write_png(tmp_path / "y.png", image)
        assert first.read_bytes() == second.read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        writers.write_png(tmp_path / "z.png", np.zeros((H, W), np.float32))


def test_colorize_is_nan_safe_and_clips() -> None:
    values = np.array([[np.nan, -1.0, 0.0, np.inf], [0.5, 1.0, 2.0, -np.inf]], np.float32)
    rgb = writers.colorize(values)
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    zero, one = rgb[0, 2], rgb[1, 1]
    for same_as_zero in (rgb[0, 0], rgb[0, 1], rgb[1, 3]):
        np.testing.assert_array_equal(same_as_zero, zero)
    for same_as_one in (rgb[1, 2], rgb[0, 3]):
        np.testing.assert_array_equal(same_as_one, one)
    assert not np.array_equal(zero, one) and not np.array_equal(rgb[1, 0], zero)
    np.testing.assert_array_equal(writers.colorize(torch.from_numpy(values)), rgb)


def test_upsample_nearest_shows_tokens_as_blocks() -> None:
    tokens = np.arange(NH * NW, dtype=np.float32).reshape(NH, NW)
    big = writers.upsample_nearest(tokens, (H, W))
    assert big.shape == (H, W)
    for i in range(NH):
        for j in range(NW):
            assert (big[i * 16 : (i + 1) * 16, j * 16 : (j + 1) * 16] == tokens[i, j]).all()
    assert writers.upsample_nearest(writers.colorize(tokens / 5), (H, W)).shape == (H, W, 3)
    odd = writers.upsample_nearest(tokens, (5, 7))  # sizes that do not divide still cover every token
    assert odd.shape == (5, 7) and set(np.unique(odd)) == set(tokens.ravel())


def test_overlay_changes_only_the_mask() -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = blobby_mask(rng)
    color = (255, 0, 64)
    out = writers.overlay(rgb, mask, color=color)
    changed = (out != rgb).any(axis=2)
    assert changed.any() and not (changed & ~mask).any()
    outlined = writers.overlay(rgb, framed_hole(), color=color)
    np.testing.assert_array_equal(outlined[6, 10:30], np.tile(color, (20, 1)))  # outer border
    np.testing.assert_array_equal(outlined[9, 16:22], np.tile(color, (6, 1)))  # border of the hole
    np.testing.assert_array_equal(writers.overlay(rgb, np.zeros((H, W), bool)), rgb)
    untinted = writers.overlay(rgb, mask, color=color, alpha=0.0)  # outline only
    assert not ((untinted != rgb).any(axis=2) & ~mask).any()
    inside = writers.overlay(rgb, framed_hole(), color=color, alpha=0.0)
    np.testing.assert_array_equal(inside[12, 12], rgb[12, 12])  # in the rectangle, off its borders


def test_dilate_is_a_square_max_filter() -> None:
    mask = blobby_mask(np.random.default_rng(3))
    padded = np.pad(mask, 1)
    expected = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            expected |= padded[dy : dy + H, dx : dx + W]
    np.testing.assert_array_equal(writers.dilate(mask, 3), expected)
    for kernel in (0, 1):
        np.testing.assert_array_equal(writers.dilate(mask, kernel), mask)
    assert (writers.dilate(mask, 5) >= writers.dilate(mask, 3)).all()


def test_spread_indices() -> None:
    assert writers.spread_indices(3, 8) == [0, 1, 2]
    picked = writers.spread_indices(20, 8)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 19 and picked == sorted(set(picked))


def test_overview_caps_columns_and_thumbnail_width() -> None:
    def grid(frames: int, rows: int) -> np.ndarray:
        image = np.zeros((288, 512, 3), np.uint8)
        return writers.overview([(f"row {i}", [image] * frames) for i in range(rows)])

    eight, four = grid(8, 2), grid(4, 2)
    assert grid(20, 2).shape == eight.shape  # long videos show 8 evenly spaced frames
    cell_w = (eight.shape[1] - four.shape[1]) / 4
    assert 256 <= cell_w <= 256 + 8
    cell_h = grid(8, 3).shape[0] - eight.shape[0]
    assert 144 <= cell_h <= 144 + 8
    assert eight.dtype == np.uint8 and eight.shape[2] == 3
    with pytest.raises(ValueError, match="every row"):
        writers.overview([("a", [np.zeros((4, 4), np.uint8)]), ("b", [])])


def test_overview_draws_legends_at_the_rows_right_end() -> None:
    image = np.zeros((36, 64, 3), np.uint8)
    rows = [("a", [image] * 2), ("b", [image] * 2)]
    plain = writers.overview(rows)
    legend = writers.overview(rows, legends={"b": writers.colorbar})
    bar = writers.colorbar(36)
    assert legend.shape[0] == plain.shape[0] and legend.shape[1] == plain.shape[1] + bar.shape[1] + 2
    top = plain.shape[0] - 2 - 36  # the last row's cells
    np.testing.assert_array_equal(legend[top : top + 36, plain.shape[1] : plain.shape[1] + bar.shape[1]], bar)
    np.testing.assert_array_equal(legend[:, : plain.shape[1]], plain)


def test_colorbar_and_swatch() -> None:
    bar = writers.colorbar(50)
    assert bar.shape[0] == 50 and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[0, 0], writers.colorize(np.ones((1, 1)))[0, 0])  # 1 at the top
    np.testing.assert_array_equal(bar[-1, 0], writers.colorize(np.zeros((1, 1)))[0, 0])
    entry = writers.swatch(30, (255, 0, 64), "dynamic")
    assert entry.shape[0] == 30 and (entry == np.array([255, 0, 64], np.uint8)).all(axis=2).sum() == 12 * 12


def test_side_by_side_labels_every_panel() -> None:
    panels = [(name, np.full((20, 30, 3), 100 + i, np.uint8)) for i, name in enumerate(("x", "y", "z"))]
    row = writers.side_by_side(panels, legend=writers.colorbar)
    width = 30 + writers.colorbar(20).shape[1] + 2
    assert row.shape[1] == 3 * (width + 2) - 2 and row.shape[0] > 20
    for i in range(3):
        assert (row[-20:, i * (width + 2) : i * (width + 2) + 30] == 100 + i).all()
    with pytest.raises(ValueError, match="every panel"):
        writers.side_by_side([("a", np.zeros((2, 2, 3), np.uint8)), ("b", np.zeros((2, 3, 3), np.uint8))])


def test_write_mp4_pads_odd_sizes_and_is_deterministic(tmp_path: Path) -> None:
    import imageio.v2 as imageio

    frames = [np.full((33, 47, 3), 40 * t, np.uint8) for t in range(4)]
    first = writers.write_mp4(tmp_path / "a" / "v.mp4", frames, fps=5)
    assert first.read_bytes() == writers.write_mp4(tmp_path / "w.mp4", iter(frames), fps=5).read_bytes()
    reader = imageio.get_reader(first)
    read = [np.asarray(frame) for frame in reader]
    assert reader.get_meta_data()["fps"] == 5
    reader.close()
    assert len(read) == 4 and read[0].shape == (34, 48, 3)
    assert np.abs(read[2][:33, :47].astype(int) - 80).max() <= 3


def test_save_safetensors_keeps_dtypes(tmp_path: Path) -> None:
    tensors = {
        "flag": torch.tensor([[True, False]]),
        "index": torch.arange(6, dtype=torch.int64).reshape(2, 3).t(),  # non-contiguous view
        "half": torch.ones(2, dtype=torch.float16),
        "array": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::-1],  # negative strides
    }
    shared = torch.arange(8.0)
    tensors.update(first=shared[:4], second=shared[4:])  # views of one storage
    path = writers.save_safetensors(tmp_path / "sub" / "t.safetensors", tensors, {"note": "x"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"note": "x"}
        loaded = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert loaded["flag"].dtype == torch.bool and loaded["index"].dtype == torch.int64
    assert loaded["half"].dtype == torch.float16
    torch.testing.assert_close(loaded["index"], tensors["index"])
    np.testing.assert_array_equal(loaded["array"].numpy(), tensors["array"])
    torch.testing.assert_close(torch.cat([loaded["first"], loaded["second"]]), shared)

    # safetensors orders metadata by a hash map; the writer must still give the same bytes every time
    many = {"b": "1", "a": "2", "c": "3", "d": "ä\n"}
    saved = {
        writers.save_safetensors(tmp_path / f"{i}.safetensors", tensors, many).read_bytes() for i in range(4)
    }
    assert len(saved) == 1


# --- exporters ------------------------------------------------------------------------------------


def test_mask_exporter(result, tmp_path: Path) -> None:
    written = MaskExporter()(result, tmp_path)
    assert len(written) == 2 * T and all(path.is_file() for path in written)
    expected = result.masks.masks.numpy()
    for t in range(T):
        mask = read_png(tmp_path / "masks" / f"dynamic_mask_{t:04d}.png")
        enlarged = read_png(tmp_path / "masks" / f"enlarged_dynamic_mask_{t:04d}.png")
        assert mask.shape == (H, W) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and set(np.unique(enlarged)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, expected[t])
        np.testing.assert_array_equal(enlarged == 255, writers.dilate(expected[t], 3))
        assert (enlarged >= mask).all()
    assert (read_png(tmp_path / "masks" / "enlarged_dynamic_mask_0000.png") > expected[0] * 255).any()

    MaskExporter(dilate=1)(result, tmp_path / "plain")
    plain = read_png(tmp_path / "plain" / "masks" / "enlarged_dynamic_mask_0000.png")
    np.testing.assert_array_equal(plain == 255, expected[0])


def test_map_exporter(result, tmp_path: Path) -> None:
    written = MapExporter()(result, tmp_path)
    names = (*STATS, "dynamic_map", "refined_map")
    assert len(written) == len(names) * T + 2 and all(path.is_file() for path in written)
    for name in names:
        for t in range(T):
            image = read_png(tmp_path / "maps" / name / f"{t:04d}.png")
            assert image.shape == (H, W, 3) and image.dtype == np.uint8
    token = result.masks.dynamic_map[1].numpy()
    np.testing.assert_array_equal(
        read_png(tmp_path / "maps" / "dynamic_map" / "0001.png"),
        writers.upsample_nearest(writers.colorize(token), (H, W)),
    )

    with safe_open(str(tmp_path / "maps" / "maps.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["frames"]) == result.frames.paths
        assert float(f.metadata()["threshold"]) == result.masks.threshold
        loaded = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert set(loaded) == {*STATS, *(f"{name}_raw" for name in STATS), "dynamic_map", "refined_map", "masks"}
    for name in STATS:
        assert loaded[name].shape == (T, NH, NW) and loaded[f"{name}_raw"].shape == (T, NH, NW, C)
        torch.testing.assert_close(loaded[name], result.masks.maps[name])
    assert loaded["refined_map"].shape == (T, NH, NW)
    assert loaded["masks"].dtype == torch.bool and loaded["masks"].shape == (T, H, W)
    torch.testing.assert_close(loaded["masks"], result.masks.masks)

    overview = read_png(tmp_path / "overview.png")
    rows = 1 + len(names) + 1  # RGB, six maps, mask overlay
    assert overview.ndim == 3 and overview.shape[2] == 3
    assert rows * H <= overview.shape[0] <= rows * (H + 8) + 40  # thumbnails at frame size plus labels
    assert T * W <= overview.shape[1] <= T * (W + 8) + 300  # plus labels and legends
    bar = writers.colorbar(H)
    top = overview.shape[0] - 2 * (H + 2)  # the refined map's row, above the overlays'
    legend_x = overview.shape[1] - writers.swatch(H, (255, 0, 64), "dynamic").shape[1] - 2  # the widest
    np.testing.assert_array_equal(overview[top : top + H, legend_x : legend_x + bar.shape[1]], bar)


def test_overlay_exporter(result, tmp_path: Path) -> None:
    written = OverlayExporter(alpha=0.5)(result, tmp_path)
    assert written == [tmp_path / "overlays" / f"{t:04d}.png" for t in range(T)]
    rgb, masks = result.frames.rgb(), result.masks.masks.numpy()
    for t in range(T):
        image = read_png(written[t])
        changed = (image != rgb[t]).any(axis=2)
        assert not (changed & ~masks[t]).any()
        assert changed.any() == masks[t].any()


def test_video_exporters(result, tmp_path: Path) -> None:
    import imageio.v2 as imageio

    assert OverlayVideoExporter(fps=4)(result, tmp_path) == [tmp_path / "overlays.mp4"]
    assert MapVideoExporter()(result, tmp_path) == [tmp_path / "maps.mp4"]
    for name, height in (("overlays.mp4", H), ("maps.mp4", None)):
        reader = imageio.get_reader(tmp_path / name)
        frames = [np.asarray(frame) for frame in reader]
        reader.close()
        assert len(frames) == T
        assert height is None or frames[0].shape == (H, W, 3)
    with pytest.raises(ValueError, match="fps"):
        OverlayVideoExporter(fps=0)


def test_exporters_write_nothing_without_masks(tmp_path: Path) -> None:
    bare = fake_result(None)
    for exporter in (
        MaskExporter(),
        MapExporter(),
        OverlayExporter(),
        OverlayVideoExporter(),
        MapVideoExporter(),
    ):
        assert exporter(bare, tmp_path) == []
    assert not any(tmp_path.iterdir())


def test_exporters_are_deterministic(result, tmp_path: Path) -> None:
    def export(folder: Path) -> dict[str, bytes]:
        paths = [p for e in (MaskExporter(), MapExporter(), OverlayExporter()) for p in e(result, folder)]
        return {str(p.relative_to(folder)): p.read_bytes() for p in paths}

    assert export(tmp_path / "one") == export(tmp_path / "two")


def test_exporters_are_registered() -> None:
    exporters = registry("exporters")
    assert isinstance(exporters.create({"name": "masks"}), MaskExporter)
    assert exporters.create({"name": "maps", "overview_columns": 4}).overview_columns == 4
    assert exporters.create({"name": "overlays", "alpha": 0.3}).alpha == 0.3
    assert exporters.create({"name": "masks", "resolution": "source"}).resolution == "source"
    assert exporters.create({"name": "overlays_video", "fps": 24}).fps == 24
    assert isinstance(exporters.create({"name": "maps_video"}), MapVideoExporter)


# --- exporters set from a recipe ------------------------------------------------------------------


def export_from_recipe(result: RunResult, folder: Path, *overrides: str) -> dict[str, bytes]:
    """Run the exporters of the ``tiny`` recipe with ``overrides`` on ``result``: ``{relative path: bytes}``."""
    cfg = load_recipe("tiny", overrides)
    validate_recipe(cfg)
    paths = [path for export in create_exporters(cfg) for path in export(result, folder)]
    return {str(path.relative_to(folder)): path.read_bytes() for path in paths}


def test_recipe_sets_overview_columns(result, tmp_path: Path) -> None:
    export_from_recipe(result, tmp_path / "all", "export.exporters=[maps]")
    export_from_recipe(result, tmp_path / "two", "export.exporters=[{name: maps, overview_columns: 2}]")
    wide, narrow = (read_png(tmp_path / run / "overview.png") for run in ("all", "two"))
    assert wide.shape[0] == narrow.shape[0]
    assert wide.shape[1] - narrow.shape[1] >= W  # T = 3 columns, then 2


def test_recipe_sets_dilate_by_item_or_by_export_dilate(result, tmp_path: Path) -> None:
    expected = result.masks.masks.numpy()[0]
    name = "masks/enlarged_dynamic_mask_0000.png"
    export_from_recipe(result, tmp_path / "key", "export.exporters=[masks]", "export.dilate=1")
    np.testing.assert_array_equal(read_png(tmp_path / "key" / name) == 255, expected)
    # the item's own parameter wins over export.dilate
    export_from_recipe(
        result, tmp_path / "item", "export.exporters=[{name: masks, dilate: 5}]", "export.dilate=1"
    )
    np.testing.assert_array_equal(read_png(tmp_path / "item" / name) == 255, writers.dilate(expected, 5))


def test_recipe_sets_overlay_alpha(result, tmp_path: Path) -> None:
    half = export_from_recipe(result, tmp_path / "half", "export.exporters=[overlays]")
    opaque = export_from_recipe(
        result, tmp_path / "opaque", "export.exporters=[{name: overlays, alpha: 1.0}]"
    )
    assert half.keys() == opaque.keys() and half != opaque


@pytest.mark.parametrize("name", ["masks", "maps", "overlays", "overlays_video", "maps_video"])
def test_documented_defaults_write_the_same_bytes(result, tmp_path: Path, name: str) -> None:
    defaults = {
        key: spec["default"] for key, spec in schema_fragments()[f"export/{name}"]["properties"].items()
    }
    item = json.dumps({"name": name, **defaults})
    bare = export_from_recipe(result, tmp_path / "bare", f"export.exporters=[{name}]")
    assert bare and export_from_recipe(result, tmp_path / "explicit", f"export.exporters=[{item}]") == bare
