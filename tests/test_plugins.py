"""The plug-in manager, tested the way nerfstudio tests its registry: the installed distributions are
replaced by fakes (``importlib.metadata.distributions``), so discovery, blocking, autoload and failing
imports run through the real entry-point path without installing anything."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from easi3r import hookimpl, plugins
from easi3r.errors import PluginError, RecipeError

from .helpers import FakeDist

MODULE = "easi3r_fake_plugins"


def fake_plugin(**hooks: Callable[[], object]) -> types.SimpleNamespace:
    """A plug-in object whose hooks are the given functions: ``fake_plugin(easi3r_refiners=...)``."""
    return types.SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def kmeans(k: int = 64, seed: int = 42) -> dict:
    return {"k": k, "seed": seed}


def no_refine() -> str:
    return "none"


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.BLOCK_ENV, raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """An importable module to hang fake plug-in objects on (entry point ``easi3r_fake_plugins:attr``)."""
    fake = types.ModuleType(MODULE)
    monkeypatch.setitem(sys.modules, MODULE, fake)
    return fake


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Replace every installed distribution by the given fakes (none by default)."""

    def install(*dists: FakeDist) -> None:
        monkeypatch.setattr(importlib.metadata, "distributions", lambda **_: iter(dists))

    install()
    return install


@pytest.fixture
def fake_easi3r(install, module) -> None:
    module.strategies = fake_plugin(easi3r_refiners=lambda: {"kmeans": kmeans, "none": no_refine})
    install(FakeDist("easi3r", "0.1.0", {"strategies": f"{MODULE}:strategies"}))


def test_entry_points_are_loaded_with_their_distribution(fake_easi3r) -> None:
    pm = plugins.get_plugin_manager()
    [(plugin, dist)] = pm.list_plugin_distinfo()
    assert pm.get_name(plugin) == "strategies"
    assert (dist.project_name, dist.version) == ("easi3r", "0.1.0")
    refiners = plugins.registry("refiners")
    assert refiners.names() == ["kmeans", "none"]
    assert refiners.get("kmeans") is kmeans
    assert refiners.provider("kmeans") == ("strategies", "easi3r", "0.1.0")
    assert "none" in refiners


def test_manager_is_cached_until_reset(fake_easi3r) -> None:
    pm = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is pm
    plugins.reset_plugin_manager()
    assert plugins.get_plugin_manager() is not pm


def test_registry_hooks_run_on_first_use_only(install, module) -> None:
    calls = []
    module.p = fake_plugin(easi3r_refiners=lambda: calls.append(1) or {"kmeans": kmeans})
    install(FakeDist("pkg", "1.0", {"p": f"{MODULE}:p"}))
    plugins.get_plugin_manager()
    assert calls == []
    plugins.registry("refiners")
    plugins.registry("refiners")
    assert calls == [1]


def test_empty_registry_when_nothing_is_installed(install) -> None:
    assert plugins.registry("aligners").names() == []
    with pytest.raises(PluginError, match=r"^unknown aligner 'ga'; installed: \(none\)$"):
        plugins.registry("aligners").get("ga")


def test_unknown_kind_is_a_programming_error(install) -> None:
    with pytest.raises(ValueError, match="unknown registry kind"):
        plugins.registry("refiner")


def test_duplicate_name_names_both_packages(install, module) -> None:
    module.a = fake_plugin(easi3r_mask_rules=lambda: {"x": kmeans})
    module.b = fake_plugin(easi3r_mask_rules=lambda: {"x": no_refine})
    install(FakeDist("pkgA", "1.0", {"a": f"{MODULE}:a"}), FakeDist("pkgB", "0.2", {"b": f"{MODULE}:b"}))
    with pytest.raises(PluginError) as info:
        plugins.registry("mask_rules")
    assert str(info.value) == (
        "mask rule 'x' is provided by both pkgA 1.0 (entry point a) and pkgB 0.2 (entry point b)"
    )


def test_unknown_name_lists_installed_and_closest(fake_easi3r) -> None:
    refiners = plugins.registry("refiners")
    with pytest.raises(PluginError) as info:
        refiners.get("kmean")
    assert str(info.value) == "unknown refiner 'kmean'; installed: kmeans, none; did you mean 'kmeans'?"
    with pytest.raises(PluginError) as info:
        refiners.provider("zzz")
    assert str(info.value) == "unknown refiner 'zzz'; installed: kmeans, none"


def test_create_calls_factory_with_params(fake_easi3r) -> None:
    refiners = plugins.registry("refiners")
    assert refiners.create({"name": "kmeans", "k": 8}) == {"k": 8, "seed": 42}
    assert refiners.create(OmegaConf.create({"name": "kmeans", "seed": "${k}", "k": 3})) == {
        "k": 3,
        "seed": 3,
    }
    assert refiners.create({"name": "none"}) == "none"


def test_create_turns_bad_params_into_one_line_recipe_errors(fake_easi3r) -> None:
    refiners = plugins.registry("refiners")
    with pytest.raises(RecipeError) as info:
        refiners.create({"name": "kmeans", "kk": 3})
    assert (
        str(info.value)
        == "recipe key 'refine.kk' is not a parameter of refiner 'kmeans'; did you mean 'refine.k'?"
    )
    with pytest.raises(RecipeError, match=r"^recipe key 'post.name' is missing; name the refiner to use$"):
        refiners.create({"k": 3}, key="post")
    with pytest.raises(PluginError, match="unknown refiner 'kmean'"):
        refiners.create({"name": "kmean"})


def test_create_reports_missing_required_param(install) -> None:
    def fixed(value: float) -> float:
        return value

    plugins.get_plugin_manager(extra_plugins={"nb": fake_plugin(easi3r_thresholds=lambda: {"fixed": fixed})})
    with pytest.raises(RecipeError) as info:
        plugins.registry("thresholds").create({"name": "fixed"})
    assert str(info.value) == "recipe key 'threshold.value' is required by threshold 'fixed' but missing"


def test_autoload_switch_loads_only_easi3r_itself(install, module, monkeypatch) -> None:
    module.builtin = fake_plugin(easi3r_refiners=lambda: {"kmeans": kmeans})
    install(
        FakeDist("easi3r", "0.1.0", {"strategies": f"{MODULE}:builtin"}),
        # would fail if imported: proves that a disabled plug-in is never imported
        FakeDist("thirdparty", "2.0", {"extra": "easi3r_no_such_module"}),
    )
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    assert plugins.registry("refiners").names() == ["kmeans"]
    assert {(d["name"], d["status"]) for d in plugins.describe_plugins()} == {
        ("strategies", "loaded"),
        ("extra", "autoload disabled"),
    }
    with pytest.raises(PluginError, match="easi3r_no_such_module"):
        plugins.get_plugin_manager(autoload=True)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_blocked_plugins_are_never_imported(install, module, monkeypatch, how) -> None:
    module.good = fake_plugin(easi3r_refiners=lambda: {"kmeans": kmeans})
    install(FakeDist("pkg", "1.0", {"good": f"{MODULE}:good", "bad": "easi3r_no_such_module"}))
    if how == "env":
        monkeypatch.setenv(plugins.BLOCK_ENV, "other, bad")
        pm = plugins.get_plugin_manager()
    else:
        pm = plugins.get_plugin_manager(block=["bad"])
    assert pm.is_blocked("bad")
    assert plugins.registry("refiners").names() == ["kmeans"]
    statuses = {d["name"]: d["status"] for d in plugins.describe_plugins()}
    assert statuses == {"good": "loaded", "bad": "blocked"}


def test_missing_module_names_entry_point_distribution_and_exception(install) -> None:
    install(FakeDist("pkgbad", "3.1", {"broken": "easi3r_no_such_module"}))
    with pytest.raises(PluginError) as info:
        plugins.get_plugin_manager()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "plug-in entry point 'broken = easi3r_no_such_module' from pkgbad 3.1 failed to load: "
    )
    assert "ModuleNotFoundError: No module named 'easi3r_no_such_module'" in message
    assert message.endswith(f"block it with {plugins.BLOCK_ENV}=broken or fix/uninstall pkgbad")


def test_module_raising_at_import(install, tmp_path, monkeypatch) -> None:
    (tmp_path / "easi3r_exploding_plugin.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "easi3r_exploding_plugin", raising=False)
    install(FakeDist("pkgboom", "0.1", {"boom": "easi3r_exploding_plugin"}))
    with pytest.raises(
        PluginError, match=r"'boom = easi3r_exploding_plugin' from pkgboom 0\.1 .*RuntimeError: boom; "
    ):
        plugins.get_plugin_manager()


def test_other_groups_of_a_distribution_are_ignored(install, module) -> None:
    module.p = fake_plugin(easi3r_refiners=lambda: {"kmeans": kmeans})
    install(
        FakeDist(
            "pkg", "1.0", {"p": f"{MODULE}:p"}, extra="[console_scripts]\ntool = easi3r_no_such_module:main\n"
        )
    )
    assert plugins.registry("refiners").names() == ["kmeans"]
    assert [d["name"] for d in plugins.describe_plugins()] == ["p"]


def test_same_entry_point_name_in_two_distributions(install, module) -> None:
    module.p = fake_plugin()
    install(
        FakeDist("pkgA", "1.0", {"same": f"{MODULE}:p"}), FakeDist("pkgB", "2.0", {"same": f"{MODULE}:p"})
    )
    with pytest.raises(PluginError, match=r"^plug-in name 'same' .* both pkgA 1\.0 and pkgB 2\.0; "):
        plugins.get_plugin_manager()


def test_extra_plugins_are_registered_directly(fake_easi3r) -> None:
    notebook = fake_plugin(easi3r_refiners=lambda: {"kmeans": no_refine})
    plugins.get_plugin_manager(extra_plugins={"notebook": notebook})
    with pytest.raises(PluginError) as info:
        plugins.registry("refiners")
    assert str(info.value) == (
        "refiner 'kmeans' is provided by both easi3r 0.1.0 (entry point strategies) "
        "and plug-in 'notebook' (registered directly)"
    )


def test_provider_of_directly_registered_plugin(install) -> None:
    plugins.get_plugin_manager(extra_plugins={"nb": fake_plugin(easi3r_aligners=lambda: {"ga": kmeans})})
    assert plugins.registry("aligners").provider("ga") == ("nb", None, None)


@pytest.mark.parametrize(
    ("hook", "pattern"),
    [
        (
            lambda: 1 / 0,
            r"^plug-in 'nb' \(registered directly\) failed in easi3r_refiners: ZeroDivisionError: ",
        ),
        (
            lambda: ["kmeans"],
            r"^plug-in 'nb' .*: easi3r_refiners must return a dict \{name: factory\}, got list$",
        ),
        (lambda: {"kmeans": 3}, r"easi3r_refiners must map names to factories, got 'kmeans': int$"),
    ],
)
def test_misbehaving_hook_names_plugin_and_hook(install, hook, pattern) -> None:
    plugins.get_plugin_manager(extra_plugins={"nb": fake_plugin(easi3r_refiners=hook)})
    with pytest.raises(PluginError, match=pattern):
        plugins.registry("refiners")


def test_hook_with_a_typo_is_rejected(install, module) -> None:
    module.p = fake_plugin(easi3r_refiner=lambda: {})
    install(FakeDist("pkg", "1.0", {"p": f"{MODULE}:p"}))
    with pytest.raises(PluginError, match=r"^pkg 1\.0 \(entry point p\): unknown hook 'easi3r_refiner'"):
        plugins.get_plugin_manager()


def test_recipe_dirs_builtin_first(install, tmp_path) -> None:
    import easi3r.configs

    plugins.get_plugin_manager(extra_plugins={"nb": fake_plugin(easi3r_recipe_dirs=lambda: [str(tmp_path)])})
    assert plugins.recipe_dirs() == [Path(easi3r.configs.__file__).parent, tmp_path]
    assert (plugins.recipe_dirs()[0] / "easi3r_dust3r.yaml").is_file()


def test_recipe_dir_that_does_not_exist(install, tmp_path) -> None:
    missing = tmp_path / "nope"
    plugins.get_plugin_manager(extra_plugins={"nb": fake_plugin(easi3r_recipe_dirs=lambda: [missing])})
    with pytest.raises(PluginError, match=r"^plug-in 'nb' \(registered directly\): easi3r_recipe_dirs lists"):
        plugins.recipe_dirs()


def test_schema_fragments_merge_and_duplicates(install, module) -> None:
    module.a = fake_plugin(easi3r_schema_fragments=lambda: {"refine/kmeans": {"type": "object"}})
    module.b = fake_plugin(easi3r_schema_fragments=lambda: {"align/ga": {"type": "object"}})
    install(FakeDist("pkgA", "1.0", {"a": f"{MODULE}:a"}), FakeDist("pkgB", "0.2", {"b": f"{MODULE}:b"}))
    assert plugins.schema_fragments() == {"refine/kmeans": {"type": "object"}, "align/ga": {"type": "object"}}

    module.b = fake_plugin(easi3r_schema_fragments=lambda: {"refine/kmeans": {}})
    plugins.reset_plugin_manager()
    with pytest.raises(PluginError) as info:
        plugins.schema_fragments()
    assert str(info.value) == (
        "schema fragment 'refine/kmeans' is provided by both pkgA 1.0 (entry point a) and pkgB 0.2 (entry point b)"
    )


def test_invalid_schema_fragment(install) -> None:
    bad = fake_plugin(easi3r_schema_fragments=lambda: {"refine/kmeans": {"type": "integr"}})
    plugins.get_plugin_manager(extra_plugins={"nb": bad})
    with pytest.raises(PluginError, match=r"schema fragment 'refine/kmeans' is not a valid JSON Schema"):
        plugins.schema_fragments()


def test_describe_plugins(install, module) -> None:
    module.builtin = fake_plugin(
        easi3r_refiners=lambda: {"kmeans": kmeans, "none": no_refine},
        easi3r_aligners=lambda: {"none": no_refine},
    )
    module.extra = fake_plugin(easi3r_exporters=lambda: {"ply": kmeans})
    install(
        FakeDist("easi3r", "0.1.0", {"strategies": f"{MODULE}:builtin"}),
        FakeDist("easi3r-ply", "1.2", {"ply": f"{MODULE}:extra"}),
    )
    assert plugins.describe_plugins() == [
        {
            "name": "strategies",
            "distribution": "easi3r",
            "version": "0.1.0",
            "status": "loaded",
            "provides": {"refiners": ["kmeans", "none"], "aligners": ["none"]},
            "recipe_dirs": [],
            "fragments": [],
        },
        {
            "name": "ply",
            "distribution": "easi3r-ply",
            "version": "1.2",
            "status": "loaded",
            "provides": {"exporters": ["ply"]},
            "recipe_dirs": [],
            "fragments": [],
        },
    ]
