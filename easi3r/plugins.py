"""The plug-in manager: discovery, blocking and the ``{name: factory}`` registries.

Plug-ins are found through the entry-point group ``easi3r``; easi3r's own backbones and strategies are
declared in that same group by the ``easi3r`` distribution, so built-ins take the path a third-party
package takes. Nothing is discovered at import time: the first call to :func:`get_plugin_manager` (or
to anything that needs it) loads the entry points, and each registry hook is called on first use.

Switches, as in pytest:

* ``EASI3R_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the entry points of the ``easi3r`` distribution itself;
* ``EASI3R_BLOCK_PLUGINS=name1,name2`` (entry-point names; also the ``block`` argument) keeps those
  plug-ins from being imported at all.

Every problem a plug-in causes (a failing import, a hook that raises or returns garbage, a name that two
packages provide) is a one-line :class:`~easi3r.errors.PluginError` naming the plug-in and its package.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pluggy
from omegaconf import DictConfig, OmegaConf

import easi3r.configs
from easi3r import hookspecs
from easi3r.errors import PluginError, RecipeError, one_line

ENTRY_POINT_GROUP = "easi3r"
BUILTIN_DISTRIBUTION = "easi3r"
AUTOLOAD_ENV = "EASI3R_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "EASI3R_BLOCK_PLUGINS"
BUILTIN_RECIPE_DIR = Path(easi3r.configs.__file__).parent


class Kind(NamedTuple):
    label: str  # singular noun for messages ("unknown refiner 'x'")
    section: str  # the recipe key that names a strategy of this kind


# Registry kinds; the hook of each is ``easi3r_<kind>``.
KINDS: dict[str, Kind] = {
    "backbones": Kind("backbone", "backbone"),
    "capture_strategies": Kind("capture strategy", "capture"),
    "mask_rules": Kind("mask rule", "rule"),
    "refiners": Kind("refiner", "refine"),
    "thresholds": Kind("threshold", "threshold"),
    "reweight_policies": Kind("re-weighting policy", "reweight"),
    "aligners": Kind("aligner", "align"),
    "exporters": Kind("exporter", "export.exporters"),
    "flow_models": Kind("flow model", "align.flow_model"),
}


class Provider(NamedTuple):
    """Where a plug-in comes from: its registered name and, for entry points, its distribution."""

    plugin: str
    distribution: str | None  # None for plug-ins registered directly (``extra_plugins``)
    version: str | None

    def __str__(self) -> str:
        if self.distribution is None:
            return f"plug-in '{self.plugin}' (registered directly)"
        return f"{self.distribution} {self.version} (entry point {self.plugin})"


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean '<prefix>x'?"`` for the closest candidate ``x``, or ``""`` when none is close.

    Recipe keys are compared without their common parent, which comes back as ``prefix``: a shared
    ``threshold.`` would make any two keys of a section look alike.
    """
    match = difflib.get_close_matches(word, list(candidates), n=1)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


def _normalize(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


class Registry:
    """The merged ``{name: factory}`` of one kind, remembering which plug-in provides each name."""

    def __init__(self, kind: str, entries: Mapping[str, tuple[Callable[..., Any], Provider]]) -> None:
        self.kind = kind
        self.label = KINDS[kind].label
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; an unknown name lists what is installed."""
        return self._entry(name)[0]

    def provider(self, name: str) -> Provider:
        """``(plugin_name, distribution, version)`` of the plug-in that provides ``name``."""
        return self._entry(name)[1]

    def create(self, section: Mapping[str, Any], *, key: str | None = None) -> Any:
        """``factory(**params)`` for a recipe section ``{name: X, **params}``.

        ``key`` is the recipe key of the section, for messages (default: the section of this kind).
        Parameters that do not fit the factory's signature are a :class:`RecipeError` naming the key.
        """
        where = key or KINDS[self.kind].section
        params = dict(
            OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
        )
        if "name" not in params:
            raise RecipeError(f"recipe key '{where}.name' is missing; name the {self.label} to use")
        name = params.pop("name")
        factory = self.get(name)
        problem = _signature_problem(factory, params, where, f"{self.label} '{name}'")
        if problem:
            raise RecipeError(problem)
        return factory(**params)

    def _entry(self, name: str) -> tuple[Callable[..., Any], Provider]:
        if name not in self._entries:
            installed = ", ".join(self.names()) or "(none)"
            raise PluginError(
                f"unknown {self.label} '{name}'; installed: {installed}{did_you_mean(name, self._entries)}"
            )
        return self._entries[name]


def _signature_problem(factory: Callable[..., Any], params: Mapping[str, Any], where: str, what: str) -> str:
    """A one-line description of why ``factory(**params)`` cannot bind, or ``""``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature: the call itself will tell
        return ""
    try:
        signature.bind(**params)
        return ""
    except TypeError as exc:
        bind_error = exc
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in signature.parameters.values() if p.kind in keyword]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [] if takes_any else [k for k in params if k not in accepted]
    if unknown:
        hint = did_you_mean(unknown[0], accepted, prefix=f"{where}.")
        return f"recipe key '{where}.{unknown[0]}' is not a parameter of {what}{hint}"
    missing = [
        p.name
        for p in signature.parameters.values()
        if p.kind in keyword and p.default is inspect.Parameter.empty and p.name not in params
    ]
    if missing:
        return f"recipe key '{where}.{missing[0]}' is required by {what} but missing"
    return f"recipe section '{where}' does not fit {what}: {bind_error}"


# --- loading ---------------------------------------------------------------------------------------


@dataclass
class _State:
    pm: pluggy.PluginManager
    # Entry points found but not loaded, with the reason ("blocked", "autoload disabled").
    skipped: list[tuple[Provider, str]]
    registries: dict[str, Registry] = field(default_factory=dict)
    fragments: dict[str, dict] | None = None


_state: _State | None = None


def get_plugin_manager(
    *,
    block: Iterable[str] = (),
    extra_plugins: Mapping[str, object] | None = None,
    autoload: bool | None = None,
) -> pluggy.PluginManager:
    """The process-wide plug-in manager, loaded on first call and cached.

    Called with arguments it builds a new manager that replaces the cached one: ``block`` adds entry-point
    names to ``EASI3R_BLOCK_PLUGINS``; ``extra_plugins`` registers ``{name: plugin object}`` directly (a
    notebook's own strategies, or fakes in tests); ``autoload`` overrides ``EASI3R_DISABLE_PLUGIN_AUTOLOAD``.
    """
    global _state
    block = list(block)
    if _state is None or block or extra_plugins or autoload is not None:
        _state = _load(block, extra_plugins or {}, autoload)
    return _state.pm


def reset_plugin_manager() -> None:
    """Forget the cached manager and registries; the next use discovers plug-ins again (for tests)."""
    global _state
    _state = None


def _current() -> _State:
    global _state
    if _state is None:
        _state = _load([], {}, None)
    return _state


def _load(block: list[str], extra_plugins: Mapping[str, object], autoload: bool | None) -> _State:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    env_block = [n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()]
    for name in [*env_block, *block]:
        pm.set_blocked(name)  # before loading: pluggy then never imports the entry point
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")

    # entry_points() keeps one copy of each distribution (an editable install may appear twice on sys.path).
    entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    skipped: list[tuple[Provider, str]] = []
    for ep in entry_points:
        origin = Provider(ep.name, ep.dist.name, ep.dist.version)
        if not autoload and _normalize(ep.dist.name) != BUILTIN_DISTRIBUTION:
            skipped.append((origin, "autoload disabled"))
        elif pm.is_blocked(ep.name):
            skipped.append((origin, "blocked"))
        else:
            _check_unique_entry_point(ep, entry_points)
            _load_entry_point(pm, ep, origin)

    for name, plugin in extra_plugins.items():
        try:
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plug-in '{name}' cannot be registered: {one_line(exc)}") from exc
    try:
        pm.check_pending()  # a hookimpl whose name is no easi3r hook is almost always a typo
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{_provider(pm, pm.get_name(exc.plugin))}: {one_line(exc)}") from exc
    return _State(pm, skipped)


def _check_unique_entry_point(
    ep: importlib.metadata.EntryPoint, everything: list[importlib.metadata.EntryPoint]
) -> None:
    # pluggy registers plug-ins under their entry-point name and would silently skip a second package
    # using the same name; loading would then depend on sys.path order.
    for other in everything:
        if other.name == ep.name and _normalize(other.dist.name) != _normalize(ep.dist.name):
            raise PluginError(
                f"plug-in name '{ep.name}' is declared in entry-point group '{ENTRY_POINT_GROUP}' by both "
                f"{ep.dist.name} {ep.dist.version} and {other.dist.name} {other.dist.version}; "
                "entry-point names must be unique, uninstall or rename one"
            )


def _load_entry_point(pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint, origin: Provider) -> None:
    # Loading one name at a time lets a failure name its entry point, while pluggy still records the
    # distribution (list_plugin_distinfo).
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
    except Exception as exc:
        raise PluginError(
            f"plug-in entry point '{ep.name} = {ep.value}' from {origin.distribution} {origin.version} "
            f"failed to load: {type(exc).__name__}: {one_line(exc)}; "
            f"block it with {BLOCK_ENV}={ep.name} or fix/uninstall {origin.distribution}"
        ) from exc


def _provider(pm: pluggy.PluginManager, plugin_name: str) -> Provider:
    plugin = pm.get_plugin(plugin_name)
    for candidate, dist in pm.list_plugin_distinfo():
        if candidate is plugin:
            return Provider(plugin_name, dist.project_name, dist.version)
    return Provider(plugin_name, None, None)


def _call_each(pm: pluggy.PluginManager, hook_name: str) -> list[tuple[Provider, Any]]:
    """Call every implementation of an argument-less hook, keeping who answered what.

    pluggy's own hook call returns a bare list of results, which cannot say which plug-in a duplicate
    name came from; so each implementation is called here, in registration order.
    """
    results = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        provider = _provider(pm, impl.plugin_name)
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"{provider} failed in {hook_name}: {type(exc).__name__}: {one_line(exc)}"
            ) from exc
        if result is not None:
            results.append((provider, result))
    return results


def _mapping_result(provider: Provider, hook_name: str, result: object, what: str) -> Mapping:
    if not isinstance(result, Mapping):
        raise PluginError(f"{provider}: {hook_name} must return a dict {what}, got {type(result).__name__}")
    return result


# --- what plug-ins provide -------------------------------------------------------------------------


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`), built from its hook on first use."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
    state = _current()
    if kind not in state.registries:
        state.registries[kind] = _build_registry(state.pm, kind)
    return state.registries[kind]


def _build_registry(pm: pluggy.PluginManager, kind: str) -> Registry:
    hook_name = f"easi3r_{kind}"
    label = KINDS[kind].label
    entries: dict[str, tuple[Callable[..., Any], Provider]] = {}
    for provider, result in _call_each(pm, hook_name):
        for name, factory in _mapping_result(provider, hook_name, result, "{name: factory}").items():
            if not isinstance(name, str) or not callable(factory):
                raise PluginError(
                    f"{provider}: {hook_name} must map names to factories, got {name!r}: {type(factory).__name__}"
                )
            if name in entries:
                raise PluginError(f"{label} '{name}' is provided by both {entries[name][1]} and {provider}")
            entries[name] = (factory, provider)
    return Registry(kind, entries)


def recipe_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml`` recipes: the built-in ``configs/`` first, then plug-ins'."""
    dirs = [BUILTIN_RECIPE_DIR]
    for provider, result in _call_each(_current().pm, "easi3r_recipe_dirs"):
        for entry in result:
            path = Path(entry)
            if not path.is_dir():
                raise PluginError(f"{provider}: easi3r_recipe_dirs lists '{path}', which is not a folder")
            dirs.append(path)
    return dirs


def schema_fragments() -> dict[str, dict]:
    """JSON-Schema fragments of all plug-ins, keyed ``"<section>/<name>"``; each is checked once."""
    state = _current()
    if state.fragments is None:
        merged: dict[str, dict] = {}
        origin: dict[str, Provider] = {}
        for provider, result in _call_each(state.pm, "easi3r_schema_fragments"):
            fragments = _mapping_result(
                provider, "easi3r_schema_fragments", result, '{"<section>/<name>": schema}'
            )
            for key, fragment in fragments.items():
                if key in merged:
                    raise PluginError(
                        f"schema fragment '{key}' is provided by both {origin[key]} and {provider}"
                    )
                try:
                    jsonschema.Draft202012Validator.check_schema(fragment)
                except jsonschema.SchemaError as exc:
                    raise PluginError(
                        f"{provider}: schema fragment '{key}' is not a valid JSON Schema: {one_line(exc.message)}"
                    ) from exc
                merged[key] = fragment
                origin[key] = provider
        state.fragments = merged
    return state.fragments


def describe_plugins() -> list[dict[str, Any]]:
    """One dict per plug-in for ``easi3r plugins``.

    Keys: ``name`` (entry-point name), ``distribution``, ``version`` (None for directly registered
    plug-ins), ``status`` ("loaded", "blocked" or "autoload disabled"), and for loaded plug-ins only
    ``provides`` (``{kind: [names]}``), ``recipe_dirs`` (the folders its recipes are read from) and
    ``fragments`` (the keys of the schema fragments it ships, ``"<section>/<name>"``).
    """
    state = _current()
    provides: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        reg = registry(kind)
        for name in reg.names():
            provides.setdefault(reg.provider(name).plugin, {}).setdefault(kind, []).append(name)
    shipped: dict[str, dict[str, list[str]]] = {}
    for hook, key in (("easi3r_recipe_dirs", "recipe_dirs"), ("easi3r_schema_fragments", "fragments")):
        for provider, result in _call_each(state.pm, hook):
            shipped.setdefault(provider.plugin, {})[key] = sorted(str(item) for item in result)
    described = []
    for plugin_name, plugin in state.pm.list_name_plugin():
        if plugin is None:  # pluggy lists blocked names with no plug-in; they appear in `skipped`
            continue
        extra = shipped.get(plugin_name, {})
        described.append(
            _description(_provider(state.pm, plugin_name), "loaded", provides.get(plugin_name, {}), extra)
        )
    described += [_description(provider, reason, {}, {}) for provider, reason in state.skipped]
    return described


def _description(
    provider: Provider, status: str, provides: dict[str, list[str]], shipped: dict[str, list[str]]
) -> dict[str, Any]:
    return {
        "name": provider.plugin,
        "distribution": provider.distribution,
        "version": provider.version,
        "status": status,
        "provides": provides,
        "recipe_dirs": shipped.get("recipe_dirs", []),
        "fragments": shipped.get("fragments", []),
    }
