"""Recipes: composition (extends, overrides), validation messages, the resolved run.yaml.

A fake ``easi3r`` distribution stands in for the built-in strategies plug-in: it registers the built-in
names and returns the fragments of ``configs/strategies.schema.json``, as the real plug-in will.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from easi3r import hookimpl, plugins
from easi3r.errors import RecipeError
from easi3r.recipes import (
    create_strategy,
    load_recipe,
    resolved_recipe_yaml,
    validate_recipe,
)

from .helpers import FakeDist

CONFIGS = plugins.BUILTIN_RECIPE_DIR
SHIPPED = ["easi3r_dust3r", "easi3r_monst3r", "dust3r_baseline", "tiny"]
MODULE = "easi3r_fake_builtins"


def anything(**params: object) -> dict:
    return params


def kmeans(k: int = 64, seed: int = 42, n_init: str | int = "auto", max_iter: int = 300) -> dict:
    return {"k": k, "seed": seed, "n_init": n_init, "max_iter": max_iter}


def _registered_names() -> dict[str, list[str]]:
    """The names the real built-in plug-ins register (their factories are replaced by recording ones)."""
    from easi3r.backends import plugin as backends_plugin
    from easi3r.strategies import plugin as strategies_plugin

    names = {"backbones": list(backends_plugin.easi3r_backbones())}
    for kind in (
        "capture_strategies",
        "mask_rules",
        "refiners",
        "thresholds",
        "reweight_policies",
        "aligners",
        "exporters",
    ):
        names[kind] = list(getattr(strategies_plugin, f"easi3r_{kind}")())
    return names


BUILTIN_NAMES = _registered_names()


def builtin_plugin() -> types.SimpleNamespace:
    """What easi3r.strategies.plugin / easi3r.backends.plugin will register, with recording factories."""
    hooks = {
        f"easi3r_{kind}": hookimpl(
            lambda names=names: {n: kmeans if n == "kmeans" else anything for n in names}
        )
        for kind, names in BUILTIN_NAMES.items()
    }
    fragments = json.loads((CONFIGS / "strategies.schema.json").read_text())
    return types.SimpleNamespace(**hooks, easi3r_schema_fragments=hookimpl(lambda: fragments))


def extra_aligners() -> types.SimpleNamespace:
    """A third-party aligner with a fragment ('ga') and one without ('bare')."""
    return types.SimpleNamespace(
        easi3r_aligners=hookimpl(lambda: {"ga": anything, "bare": anything}),
        easi3r_schema_fragments=hookimpl(
            lambda: {"align/ga": {"type": "object", "properties": {"iters": {"type": "integer"}}}}
        ),
    )


@pytest.fixture(autouse=True)
def fake_easi3r(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.BLOCK_ENV, raising=False)
    module = types.ModuleType(MODULE)
    module.fake_easi3r = builtin_plugin()
    monkeypatch.setitem(sys.modules, MODULE, module)
    dist = FakeDist("easi3r", "0.1.0", {"strategies": f"{MODULE}:fake_easi3r"})
    monkeypatch.setattr(importlib.metadata, "distributions", lambda **_: iter([dist]))
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


@pytest.fixture
def no_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "distributions", lambda **_: iter(()))
    plugins.reset_plugin_manager()


def error_of(cfg, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        validate_recipe(cfg, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def load_error(name: str, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(name, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- shipped recipes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_validate(name: str) -> None:
    cfg = load_recipe(name)
    assert "extends" not in cfg
    validate_recipe(cfg)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_validate_without_plugins(no_plugins, name: str) -> None:
    validate_recipe(load_recipe(name), check_names=False)


def test_default_recipe_is_the_reference_configuration() -> None:
    assert OmegaConf.to_container(load_recipe("easi3r_dust3r")) == {
        "backbone": {
            "name": "dust3r",
            "preset": "vitl_512_dpt",
            "checkpoint": None,
            "device": "auto",
            "precision": "fp32",
            "batch_size": 8,
        },
        "frames": {
            "mode": "dust3r",
            "size": 512,
            "crop": True,
            "square_ok": False,
            "stride": 1,
            "max_frames": None,
        },
        "pairs": {"graph": "swinstride-5-noncyclic", "symmetrize": True, "cap_window": True},
        "capture": {"name": "query_mean"},
        "maps": {"corner_fix": True, "single_pair_std": "zero"},
        "rule": {
            "name": "formula",
            "formula": "frame_minmax((1 - src_mean) * src_std * ref_mean * (1 - ref_std))",
        },
        "refine": {"name": "kmeans", "k": 64, "seed": 42},
        "threshold": {"name": "adaptive_multiotsu", "classes": [2, 3, 4], "bins": 256},
        "reweight": {"name": "zero_dynamic_keys", "decoders": [1], "layers": None},
        "passes": {"reweight": True, "masks": True, "masks_from": "pass2", "pass1_heads": False},
        "sam2": {
            "enabled": False,
            "checkpoint": None,
            "config": "configs/sam2.1/sam2.1_hiera_l.yaml",
            "device": "auto",
            "passes": [1, 2],
            "combine": "union",
        },
        "align": {
            "name": "global",
            "iters": 300,
            "lr": 0.01,
            "lr_min": 0.001,
            "schedule": "linear",
            "exclude_dynamic": False,
            "temporal_smoothing_weight": 0.0,
            "flow_loss_weight": 0.0,
            "flow_loss_start_epoch": 0.1,
            "flow_loss_thre": 20,
            "pxl_thre": 50,
            "flow_model": {"name": "sea_raft", "checkpoint": None},
        },
        "scale": {"stream": "auto", "chunk_pairs": 64, "align_window": None, "align_overlap": 5},
        "export": {
            "exporters": [
                "masks",
                "maps",
                "overlays",
                "overlays_video",
                "maps_video",
                "trajectory",
                "depth",
                "pointcloud",
                "colmap",
                "scene",
            ],
            "dilate": 3,
            "save_intermediates": False,
        },
        "seed": 0,
    }


def test_derived_recipes_change_only_what_they_name() -> None:
    base = OmegaConf.to_container(load_recipe("easi3r_dust3r"))

    monst3r = OmegaConf.to_container(load_recipe("easi3r_monst3r"))
    assert monst3r["backbone"] == {**base["backbone"], "name": "monst3r", "preset": "monst3r_vitl_512_dpt"}
    assert {k: v for k, v in monst3r.items() if k != "backbone"} == {
        k: v for k, v in base.items() if k != "backbone"
    }

    baseline = OmegaConf.to_container(load_recipe("dust3r_baseline"))
    assert baseline["passes"] == {**base["passes"], "reweight": False, "masks": False}

    tiny = OmegaConf.to_container(load_recipe("tiny"))
    assert tiny["backbone"]["preset"] == "tiny"
    assert tiny["backbone"]["checkpoint"] is None
    assert tiny["frames"]["size"] == 256
    assert tiny["refine"] == {"name": "kmeans", "k": 16, "seed": 42}


# --- extends ---------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_chain_by_name_and_relative_path(tmp_path: Path) -> None:
    write(tmp_path / "base" / "mid.yaml", "extends: easi3r_dust3r\nrefine: {k: 8}\nframes: {size: 384}\n")
    child = write(tmp_path / "child.yaml", "extends: base/mid.yaml\nframes: {size: 256}\n")
    cfg = load_recipe(str(child))
    assert "extends" not in cfg
    assert cfg.frames.size == 256  # child over parent
    assert cfg.refine == {"name": "kmeans", "k": 8, "seed": 42}  # parent over grandparent
    assert cfg.pairs.graph == "swinstride-5-noncyclic"  # grandparent
    validate_recipe(cfg)


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: ./a.yaml\n")
    assert load_error(str(tmp_path / "a.yaml")) == "recipe 'extends' cycle: a.yaml -> b.yaml -> a.yaml"
    write(tmp_path / "self.yaml", "extends: self.yaml\n")
    assert load_error(str(tmp_path / "self.yaml")) == "recipe 'extends' cycle: self.yaml -> self.yaml"


def test_extends_must_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "extends: [easi3r_dust3r]\n")
    assert load_error(str(path)).endswith(
        "'extends' must be a recipe name or a relative path to a .yaml file, got ['easi3r_dust3r']"
    )


@pytest.mark.parametrize("parent", ["/etc/passwd", "../../../etc/passwd", "~/recipe.yaml", "/tmp/base.yaml"])
def test_extends_takes_names_and_relative_yaml_paths_only(tmp_path: Path, parent: str) -> None:
    """A recipe may come from someone else: it must not make easi3r read (and quote) any file it likes."""
    path = write(tmp_path / "a.yaml", f"extends: {parent}\n")
    assert load_error(str(path)) == (
        f"{path}: 'extends' must be a recipe name or a relative path to a .yaml file, got {parent}"
    )


def test_relative_extends_is_read_from_the_recipe_folder(tmp_path: Path) -> None:
    write(tmp_path / "base" / "b.yaml", "extends: tiny\nrefine: {k: 7}\n")
    path = write(tmp_path / "child" / "a.yaml", "extends: ../base/b.yaml\n")
    assert load_recipe(str(path)).refine.k == 7


def test_error_messages_never_replay_a_file(tmp_path: Path) -> None:
    secret = "root_" + "secret-" * 100
    path = write(tmp_path / "a.yaml", f"{secret}: 1\n")
    with pytest.raises(RecipeError) as info:
        validate_recipe(load_recipe(str(path)))
    assert "root_secret-" in str(info.value)  # the key is named...
    assert len(str(info.value)) < 300  # ...but cut short


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"refine:\n  k: '\xff'\n", "not UTF-8 text (byte 0xff at offset 14)"),
        (b"refine:\n  k: ${oops\n", "key 'refine.k': no viable alternative at input '${oops'"),
        (b"a: " + b"[" * 100_000 + b"\n", "brackets nested 100000 deep; a recipe nests at most 32"),
        (b"a" * (1024**2 + 1), "1048577 bytes is too large for a recipe (at most 1 MiB)"),
    ],
    ids=["non-utf8", "interpolation", "nested", "large"],
)
def test_unreadable_recipe_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    assert load_error(str(path)) == f"{path}: {message}"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    with pytest.raises(
        RecipeError, match=r"^recipe key 'align.lr' must be a finite number, got (nan|inf|-inf)$"
    ):
        validate_recipe(load_recipe("tiny", [f"align.lr={value}"]))


def test_switching_strategy_in_a_child_drops_the_old_params(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.yaml", "extends: easi3r_dust3r\nrefine: {name: none}\nbackbone: {name: other}\n"
    )
    cfg = load_recipe(str(path))
    assert cfg.refine == {"name": "none"}
    # core keys survive, the dust3r-only preset does not
    assert cfg.backbone == {
        "name": "other",
        "checkpoint": None,
        "device": "auto",
        "precision": "fp32",
        "batch_size": 8,
    }


def test_unknown_recipe_name_lists_available() -> None:
    message = load_error("easi3r_dust")
    assert message.startswith("unknown recipe 'easi3r_dust'; available: ")
    assert "dust3r_baseline, easi3r_dust3r, easi3r_dust3r_demo, easi3r_monst3r" in message
    assert message.endswith("; did you mean 'easi3r_dust3r'?")


def test_recipe_from_plugin_folder(tmp_path: Path) -> None:
    write(tmp_path / "mine.yaml", "extends: tiny\nseed: 7\n")
    notebook = types.SimpleNamespace(easi3r_recipe_dirs=hookimpl(lambda: [tmp_path]))
    plugins.get_plugin_manager(extra_plugins={"nb": notebook})
    assert load_recipe("mine").seed == 7


def test_missing_recipe_file(tmp_path: Path) -> None:
    assert load_error(str(tmp_path / "nope.yaml")) == f"recipe file '{tmp_path / 'nope.yaml'}' does not exist"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "extends: tiny\nrefine:\n  k: [1, 2\nseed: 3\n")
    assert load_error(str(path)).startswith(f"{path}:4: invalid YAML: ")
    dup = write(tmp_path / "dup.yaml", "seed: 1\nseed: 2\n")
    assert load_error(str(dup)) == f"{dup}:2: invalid YAML: found duplicate key seed"


def test_recipe_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    assert load_error(str(path)) == f"{path}: a recipe must be a mapping of sections, not a list"


# --- overrides -------------------------------------------------------------------------------------


def test_overrides_are_read_as_yaml() -> None:
    cfg = load_recipe(
        "easi3r_dust3r",
        [
            "pairs.graph=swin-3",
            "refine.k=32",
            "reweight.layers=[0,1]",
            "backbone.checkpoint=w.pth",
            "seed=1e-3",
        ],
    )
    assert cfg.pairs.graph == "swin-3"
    assert cfg.refine.k == 32
    assert list(cfg.reweight.layers) == [0, 1]
    assert cfg.backbone.checkpoint == "w.pth"
    assert cfg.seed == 0.001  # a float, as in a YAML file (validation then rejects it)
    assert load_recipe("tiny", ["backbone.checkpoint=null"]).backbone.checkpoint is None
    assert (
        load_recipe("tiny", ["rule.formula=src_std * (1 - ref_std)"]).rule.formula
        == "src_std * (1 - ref_std)"
    )


def test_override_of_unknown_key_suggests_the_closest() -> None:
    assert load_error("easi3r_dust3r", ["refine.kk=3"]) == (
        "unknown key 'refine.kk' in override 'refine.kk=3'; did you mean 'refine.k'?"
    )
    assert load_error("easi3r_dust3r", ["frame.size=3"]) == (
        "unknown key 'frame.size' in override 'frame.size=3'; did you mean 'frames.size'?"
    )
    assert (
        load_error("easi3r_dust3r", ["align.name=none", "align.iters=10"])
        == "unknown key 'align.iters' in override 'align.iters=10'"
    )


def test_malformed_override() -> None:
    assert (
        load_error("tiny", ["refine.k"])
        == "malformed override 'refine.k'; expected key=value, e.g. refine.k=32"
    )
    assert load_error("tiny", ["=3"]).startswith("malformed override '=3'")
    assert load_error("tiny", ["refine..k=3"]).startswith("malformed override 'refine..k=3'")
    assert load_error("tiny", ["refine.k=*x"]).startswith("cannot read the value of override 'refine.k=*x': ")


def test_switching_strategy_by_override_resets_its_params() -> None:
    cfg = load_recipe("easi3r_dust3r", ["refine.name=none"])
    assert cfg.refine == {"name": "none"}
    validate_recipe(cfg)
    # same name: nothing is dropped
    assert load_recipe("easi3r_dust3r", ["refine.name=kmeans"]).refine.k == 64


def test_override_may_set_params_the_new_strategy_declares() -> None:
    plugins.get_plugin_manager(extra_plugins={"ga": extra_aligners()})
    for order in (["align.name=ga", "align.iters=10"], ["align.iters=10", "align.name=ga"]):
        cfg = load_recipe("easi3r_dust3r", order)
        assert cfg.align == {"name": "ga", "iters": 10}
        validate_recipe(cfg)


# --- validation messages ---------------------------------------------------------------------------


@pytest.fixture
def cfg():
    return load_recipe("easi3r_dust3r")


def test_misspelt_strategy_param(cfg) -> None:
    cfg.refine.kk = 3
    assert error_of(cfg) == "recipe key 'refine.kk' is not allowed; did you mean 'refine.k'?"


def test_misspelt_core_key(cfg) -> None:
    del cfg.frames["size"]
    cfg.frames.sise = 512
    assert error_of(cfg) == "recipe key 'frames.sise' is not allowed; did you mean 'frames.size'?"


def test_misspelt_section(cfg) -> None:
    cfg.refin = cfg.refine
    del cfg["refine"]
    assert error_of(cfg) == "recipe key 'refin' is not allowed; did you mean 'refine'?"


def test_unknown_key_without_a_close_match_lists_allowed(cfg) -> None:
    cfg.threshold.zzz = 1
    assert error_of(cfg) == "recipe key 'threshold.zzz' is not allowed; allowed: classes, bins"


def test_misspelt_core_key_of_a_strategy_section(cfg) -> None:
    cfg.reweight.layer = [0]
    assert error_of(cfg) == "recipe key 'reweight.layer' is not allowed; did you mean 'reweight.layers'?"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("frames.size", "big", "recipe key 'frames.size' must be integer, got 'big'"),
        ("frames.crop", 1, "recipe key 'frames.crop' must be boolean, got 1"),
        ("frames.stride", 0, "recipe key 'frames.stride' must be >= 1, got 0"),
        ("frames.max_frames", "all", "recipe key 'frames.max_frames' must be integer or null, got 'all'"),
        ("backbone.checkpoint", 3, "recipe key 'backbone.checkpoint' must be string or null, got 3"),
        (
            "backbone.precision",
            "fp64",
            "recipe key 'backbone.precision' must be one of fp32, bf16, fp16, got 'fp64'; did you mean 'fp16'?",
        ),
        (
            "backbone.device",
            "gpu",
            "recipe key 'backbone.device' must be one of auto, cpu, cuda, cuda:N, mps, got 'gpu'",
        ),
        (
            "passes.masks_from",
            "pass3",
            "recipe key 'passes.masks_from' must be one of pass1, pass2, got 'pass3'; did you mean 'pass2'?",
        ),
        ("reweight.decoders", [3], "recipe key 'reweight.decoders[0]' must be one of 1, 2, got 3"),
        ("reweight.layers", [0, -1], "recipe key 'reweight.layers[1]' must be >= 0, got -1"),
        ("export.dilate", -1, "recipe key 'export.dilate' must be >= 0, got -1"),
        ("seed", 0.5, "recipe key 'seed' must be integer, got 0.5"),
        ("refine.k", "many", "recipe key 'refine.k' must be integer, got 'many'"),
        ("refine.n_init", "fast", "recipe key 'refine.n_init' must be 'auto' or an integer >= 1, got 'fast'"),
        ("threshold.classes", [2, 7], "recipe key 'threshold.classes[1]' must be <= 5, got 7"),
        ("threshold.classes", [], "recipe key 'threshold.classes' is invalid: [] should be non-empty"),
    ],
)
def test_wrong_value_names_key_and_expectation(cfg, key: str, value: object, message: str) -> None:
    OmegaConf.update(cfg, key, value, merge=False)
    assert error_of(cfg) == message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_devices(cfg, device: str) -> None:
    cfg.backbone.device = device
    validate_recipe(cfg)


def test_unknown_plugin_name(cfg) -> None:
    cfg.refine.name = "kmean"
    assert (
        error_of(cfg)
        == "recipe key 'refine.name': unknown refiner 'kmean'; installed: kmeans, none; did you mean 'kmeans'?"
    )
    cfg.refine.name = "kmeans"
    cfg.export.exporters = ["masks", "mapz"]
    assert error_of(cfg) == (
        "recipe key 'export.exporters[1]': unknown exporter 'mapz'; installed: colmap, depth, maps, maps_video, masks, nerfstudio, overlays, overlays_video, pointcloud, rerun, scene, trajectory; did you mean 'maps'?"
    )


VOXEL_RULE = (
    "null (the fused cloud keeps every point) or a number > 0 (edge of the cubes the fused cloud is averaged"
    " over)"
)


@pytest.mark.parametrize(
    ("exporters", "message"),
    [
        (
            ["masks", {"name": "pointcloud", "voxl": 0.1}],
            "recipe key 'export.exporters[1].voxl' is not allowed; did you mean 'export.exporters[1].voxel'?",
        ),
        (
            [{"name": "maps", "width": 4}],
            "recipe key 'export.exporters[0].width' is not allowed; allowed: overview_columns",
        ),
        (
            [{"name": "pointcloud", "voxel": 0}],
            f"recipe key 'export.exporters[0].voxel' must be {VOXEL_RULE}, got 0",
        ),
        (
            [{"name": "colmap", "max_points": -1}],
            "recipe key 'export.exporters[0].max_points' must be >= 0, got -1",
        ),
        (
            [{"name": "depth", "scale": 2}],
            "recipe key 'export.exporters[0].scale' is not allowed; allowed: none",
        ),
        (
            ["masks", {"name": "masks", "dilate": 5}],
            "recipe key 'export.exporters[1]': exporter 'masks' is listed twice; list it once",
        ),
        (
            [{"voxel": 0.1}],
            "recipe key 'export.exporters[0]' must be an exporter name (default parameters) or a mapping "
            '{name: <exporter>, <parameter>: <value>, ...}, got {"voxel": 0.1}',
        ),
    ],
)
def test_exporter_params_are_checked_by_their_fragment(cfg, exporters: list, message: str) -> None:
    cfg.export.exporters = exporters
    assert error_of(cfg) == message


def test_exporter_without_fragment_takes_no_params(cfg) -> None:
    extra = types.SimpleNamespace(easi3r_exporters=hookimpl(lambda: {"ply": anything}))
    plugins.get_plugin_manager(extra_plugins={"ply": extra})
    cfg.export.exporters = ["masks", "ply"]
    validate_recipe(cfg)
    cfg.export.exporters = ["masks", {"name": "ply", "binary": True}]
    assert error_of(cfg) == (
        "recipe key 'export.exporters[1].binary' is not allowed: exporter 'ply' takes no parameters "
        "(no schema fragment 'export/ply' is installed)"
    )


def test_exporter_params_from_the_command_line() -> None:
    cfg = load_recipe("tiny", ["export.exporters=[masks, {name: pointcloud, voxel: 0.01}]"])
    validate_recipe(cfg)
    assert OmegaConf.to_container(cfg.export.exporters) == ["masks", {"name": "pointcloud", "voxel": 0.01}]


def test_missing_keys(cfg) -> None:
    del cfg.frames["size"]
    assert error_of(cfg) == "recipe key 'frames.size' is required but missing; add it"
    del cfg["align"]
    assert error_of(cfg) == (
        "recipe key 'align' is required but missing; add it, or start the recipe with 'extends: easi3r_dust3r'"
    )


def test_strategy_without_fragment_takes_no_params(cfg) -> None:
    plugins.get_plugin_manager(extra_plugins={"ga": extra_aligners()})
    cfg.align = {"name": "bare"}
    validate_recipe(cfg)
    cfg.align.iters = 3
    assert error_of(cfg) == (
        "recipe key 'align.iters' is not allowed: aligner 'bare' takes no parameters "
        "(no schema fragment 'align/bare' is installed)"
    )
    # without name checks (no plug-ins to ask) such a section is left to the core schema
    validate_recipe(cfg, check_names=False)


def test_structure_is_checked_without_plugins(no_plugins, cfg) -> None:
    cfg.frames.size = "big"
    assert error_of(cfg, check_names=False) == "recipe key 'frames.size' must be integer, got 'big'"


def test_interpolations_are_resolved(cfg) -> None:
    cfg.frames.max_frames = "${refine.k}"
    validate_recipe(cfg)
    cfg.frames.max_frames = "${nope}"
    assert error_of(cfg).startswith("recipe key 'frames.max_frames' cannot be resolved: ")
    cfg.frames.max_frames = "???"
    assert (
        error_of(cfg)
        == "recipe key 'frames.max_frames' has no value ('???'); set it, e.g. frames.max_frames=…"
    )


# --- use -------------------------------------------------------------------------------------------


def test_create_strategy_passes_params_and_keeps_core_keys(cfg) -> None:
    assert create_strategy(cfg, "refine") == {"k": 64, "seed": 42, "n_init": "auto", "max_iter": 300}
    assert create_strategy(cfg, "reweight") == {}  # decoders/layers are read by the core
    assert create_strategy(cfg, "backbone") == {
        "preset": "vitl_512_dpt",
        "checkpoint": None,
        "device": "auto",
        "precision": "fp32",
        "batch_size": 8,
    }
    assert create_strategy(cfg, "threshold") == {"classes": [2, 3, 4], "bins": 256}
    with pytest.raises(ValueError, match="not a strategy section"):
        create_strategy(cfg, "frames")


def test_create_strategy_rejects_params_the_factory_does_not_take(cfg) -> None:
    cfg.refine.kk = 1
    with pytest.raises(RecipeError, match=r"^recipe key 'refine.kk' is not a parameter of refiner 'kmeans'"):
        create_strategy(cfg, "refine")


def test_resolved_yaml_round_trips_and_names_plugins(cfg, tmp_path: Path) -> None:
    cfg.frames.max_frames = "${refine.k}"
    text = resolved_recipe_yaml(cfg)
    back = OmegaConf.create(text)
    builtin = {"plugin": "strategies", "distribution": "easi3r", "version": "0.1.0"}
    assert back.plugins.refine == {"name": "kmeans", **builtin}
    assert back.plugins.backbone == {"name": "dust3r", **builtin}
    assert [e.name for e in back.plugins.exporters] == list(cfg.export.exporters)
    del back["plugins"]
    assert back == OmegaConf.to_container(cfg, resolve=True)

    # a run.yaml is itself a valid recipe, and writing it again gives the same text
    run = write(tmp_path / "run.yaml", text)
    again = load_recipe(str(run))
    validate_recipe(again)
    assert resolved_recipe_yaml(again) == text


def test_run_yaml_keeps_exporter_params_and_names_their_plugins(cfg, tmp_path: Path) -> None:
    exporters = ["masks", {"name": "pointcloud", "voxel": 0.01, "max_points": 1000}]
    cfg.export.exporters = exporters
    text = resolved_recipe_yaml(cfg)
    builtin = {"plugin": "strategies", "distribution": "easi3r", "version": "0.1.0"}
    assert OmegaConf.to_container(OmegaConf.create(text).plugins.exporters) == [
        {"name": "masks", **builtin},
        {"name": "pointcloud", **builtin},
    ]
    again = load_recipe(str(write(tmp_path / "run.yaml", text)))
    validate_recipe(again)
    assert OmegaConf.to_container(again.export.exporters) == exporters
    assert resolved_recipe_yaml(again) == text


def test_a_nested_strategy_takes_its_parameters_as_overrides() -> None:
    """``align.flow_model`` names a flow model inside the aligner's section: its fragment's parameters are
    keys too, and a misspelt one is still refused."""
    cfg = load_recipe("easi3r_dust3r_demo", ["align.flow_model.preset=S", "align.flow_model.iters=12"])
    assert (cfg.align.flow_model.preset, cfg.align.flow_model.iters) == ("S", 12)
    with pytest.raises(RecipeError, match=r"unknown key 'align\.flow_model\.presett'"):
        load_recipe("easi3r_dust3r_demo", ["align.flow_model.presett=S"])
