"""Recipes: YAML files composed with OmegaConf and checked with JSON Schema.

Composition, in order: the recipe (a name, looked up as ``<name>.yaml`` in :func:`recipe_dirs`, or a
path) → its ``extends:`` chain, merged base first → command-line ``key=value`` overrides. A recipe names
registered plug-ins, never import paths.

Strategy sections (``backbone``, ``capture``, ``rule``, ``refine``, ``threshold``, ``reweight``, ``align``)
are ``{name: X, **params}``. The params belong to the strategy ``X``: when an ``extends`` child or a
``<section>.name=`` override names a *different* strategy, the section keeps only ``name`` and its core
keys, so e.g. ``refine.name=none`` does not leave k-means' ``k`` behind. Core keys are the keys the core
schema (``configs/schema.json``) types inside a strategy section:

* ``backbone``: ``checkpoint``, ``device``, ``precision``, ``batch_size`` — typed by the core, passed on to
  the backbone factory with the rest of the section (the hookspec hands it the whole section);
* ``reweight``: ``decoders``, ``layers`` — read by the core (:class:`easi3r.attention.Reweight`) and
  stripped before the policy factory is called (:data:`CONSUMED_KEYS`).

All other sections (``frames``, ``pairs``, ``maps``, ``passes``, ``export``, ``seed``) belong to the core.
Each ``export.exporters`` item is an exporter's name or a section ``{name: X, **params}`` of its own,
validated like a strategy section by the fragment ``"export/<name>"`` (:func:`exporter_sections`).

Validation (:func:`validate_recipe`): the core schema checks the structure; each chosen name must be
registered; then the section's params (without ``name`` and core keys) are validated by the fragment
``"<section>/<name>"`` that the providing plug-in ships (``easi3r_schema_fragments``). A fragment that does
not set ``additionalProperties`` is treated as closed. A registered strategy without a fragment takes no
parameters: any extra key is rejected. With ``check_names=False`` (no plug-ins installed) names are not
looked up and a section whose name has no fragment is checked by the core schema only.

Every problem is one :class:`RecipeError` line naming the key and the fix. In the schema, the
``description`` of a key validated by ``pattern``/``anyOf``/``oneOf`` is phrased to complete
"must be …", because that is how such errors are reported.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from easi3r.errors import PluginError, RecipeError, one_line
from easi3r.plugins import (
    BUILTIN_RECIPE_DIR,
    KINDS,
    did_you_mean,
    get_plugin_manager,
    recipe_dirs,
    registry,
    schema_fragments,
)

# Recipe section → registry kind of the strategy it names. Exporters (listed by ``export.exporters``) and
# flow models (named inside the aligner's section, ``align.flow_model``) are not top-level sections.
SECTION_KINDS: dict[str, str] = {
    kind.section: name for name, kind in KINDS.items() if name not in ("exporters", "flow_models")
}

# Core keys the core reads itself; they never reach the strategy factory.
CONSUMED_KEYS: dict[str, tuple[str, ...]] = {"reweight": ("decoders", "layers")}

CORE_SCHEMA_PATH = BUILTIN_RECIPE_DIR / "schema.json"

_ABSENT = object()


@functools.cache
def core_schema() -> dict[str, Any]:
    """The core recipe schema, ``configs/schema.json``."""
    return json.loads(CORE_SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.cache
def _core_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(core_schema())


@functools.cache
def core_keys(section: str) -> tuple[str, ...]:
    """Keys of a strategy section typed by the core schema: they survive a change of ``name``."""
    node = core_schema()["properties"][section]
    if "$ref" in node:  # plain strategy sections share "#/$defs/strategy"
        node = core_schema()["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return tuple(key for key in node.get("properties", {}) if key != "name")


# --- loading ---------------------------------------------------------------------------------------


def available_recipes() -> dict[str, Path]:
    """``{name: file}`` of every ``*.yaml`` in :func:`recipe_dirs`; the first folder wins a clash."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def recipe_description(path: Path) -> str:
    """The first sentence of the comment that opens a recipe file ('' when it has none)."""
    words: list[str] = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                words += line.lstrip("#").split()
    except (OSError, UnicodeDecodeError):
        return ""
    text = " ".join(words)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a recipe: file, its ``extends`` chain, then ``key=value`` overrides (not yet validated).

    ``name_or_path`` is a path when it ends in ``.yaml``/``.yml`` or contains a ``/``; otherwise a name.
    Override values are read as YAML (``refine.k=32``, ``reweight.layers=[0,1]``, ``backbone.checkpoint=null``);
    a key must exist in the recipe, or be a parameter the section's strategy declares in its fragment.
    """
    cfg = _load_chain(_locate(name_or_path, Path.cwd()), ())
    apply_overrides(cfg, overrides)
    return cfg


def _is_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref


def _is_relative_recipe_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) and not ref.startswith("~") and not Path(ref).is_absolute()


def _locate(ref: str, base_dir: Path) -> Path:
    if not _is_path(ref):
        recipes = available_recipes()
        if ref not in recipes:
            raise RecipeError(
                f"unknown recipe '{ref}'; available: {', '.join(sorted(recipes)) or '(none)'}"
                f"{did_you_mean(ref, recipes)}"
            )
        return recipes[ref]
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}' does not exist")
    return path


_MAX_RECIPE_BYTES = 1024**2  # recipes are a few kB; anything this large is not one


def _read(path: Path) -> DictConfig:
    try:
        size = path.stat().st_size
        if size > _MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: {size} bytes is too large for a recipe (at most 1 MiB)")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or one_line(exc)})") from None
    _check_nesting(text, str(path))
    try:
        cfg = OmegaConf.load(io.StringIO(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{line}: invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML: {one_line(exc)}") from exc
    except OmegaConfBaseException as exc:  # e.g. a malformed interpolation such as ${oops
        raise RecipeError(f"{path}: key '{_short(exc.full_key)}': {_short(_first_line(exc))}") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply to be a recipe") from None
    if not isinstance(cfg, DictConfig):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, not a list")
    return cfg


_MAX_NESTING = 32  # recipes nest three or four levels deep


def _check_nesting(text: str, where: str) -> None:
    """Refuse deeply nested flow collections before YAML reads them: its reader recurses once per level,
    and ``[[[[…`` many thousand levels deep overflows the C stack (a crash, not an exception)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    if deepest > _MAX_NESTING:
        raise RecipeError(f"{where}: brackets nested {deepest} deep; a recipe nests at most {_MAX_NESTING}")


def _load_chain(path: Path, seen: tuple[Path, ...]) -> DictConfig:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise RecipeError(f"recipe 'extends' cycle: {chain}")
    cfg = _read(path)
    parent = cfg.pop("extends", None)
    if parent is None:
        return cfg
    if not isinstance(parent, str) or (_is_path(parent) and not _is_relative_recipe_path(parent)):
        # a recipe may come from someone else: it must not make easi3r read (and quote) any file it likes
        raise RecipeError(
            f"{path}: 'extends' must be a recipe name or a relative path to a .yaml file, got {_short(parent)}"
        )
    base = _load_chain(_locate(parent, path.parent), (*seen, path))
    _drop_switched_params(base, child=cfg)
    try:
        return OmegaConf.merge(base, cfg)
    except OmegaConfBaseException as exc:
        raise RecipeError(
            f"{path}: key '{exc.full_key}' does not fit its base recipe: {_first_line(exc)}"
        ) from exc


def _drop_switched_params(base: DictConfig, child: DictConfig) -> None:
    # Parameters mean something only to the strategy they were written for.
    for section in SECTION_KINDS:
        old, new = base.get(section), child.get(section)
        if (
            isinstance(old, DictConfig)
            and isinstance(new, DictConfig)
            and "name" in new
            and new.get("name") != old.get("name")
        ):
            base[section] = OmegaConf.masked_copy(old, list(core_keys(section)))


class _Override(NamedTuple):
    text: str
    key: str
    value: Any


def _parse_override(text: str) -> _Override:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not all(key.split(".")):
        raise RecipeError(f"malformed override '{_short(text)}'; expected key=value, e.g. refine.k=32")
    _check_nesting(raw, f"override '{_short(text)}'")
    try:
        # OmegaConf's own YAML reading, so a value reads as it would in a recipe file (1e-3 is a float).
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise RecipeError(f"cannot read the value of override '{_short(text)}': {problem}; quote it") from exc
    except OmegaConfBaseException as exc:  # e.g. a malformed interpolation such as ${oops
        raise RecipeError(f"cannot read the value of override '{_short(text)}': {_first_line(exc)}") from None
    return _Override(text, key, value)


def _is_strategy_name(key: str) -> bool:
    section, _, rest = key.partition(".")
    return section in SECTION_KINDS and rest == "name"


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Apply ``key=value`` overrides to a composed recipe in place (as :func:`load_recipe` does)."""
    parsed = [_parse_override(text) for text in overrides]
    # Strategy switches first: they reset their section, and the new strategy's parameters given on the
    # same command line must land on the fresh section whatever their order.
    for override in sorted(parsed, key=lambda o: not _is_strategy_name(o.key)):
        try:
            _check_override_key(cfg, override)
            if _is_strategy_name(override.key):
                section = override.key.partition(".")[0]
                if cfg[section].get("name") != override.value:
                    cfg[section] = OmegaConf.masked_copy(cfg[section], list(core_keys(section)))
            OmegaConf.update(cfg, override.key, override.value, merge=False)
        except OmegaConfBaseException as exc:  # e.g. a strategy name that interpolates nothing: ${0}
            raise RecipeError(
                f"cannot apply override '{_short(override.text)}': {_first_line(exc)}"
            ) from None


def _check_override_key(cfg: DictConfig, override: _Override) -> None:
    if OmegaConf.select(cfg, override.key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT:
        return
    section, _, param = override.key.partition(".")
    strategy = cfg.get(section) if section in SECTION_KINDS and "." not in param else None
    if isinstance(strategy, DictConfig) and (
        param == "name" or param in _fragment_params(section, strategy.get("name"))
    ):
        return
    # a parameter of a strategy named inside another's section (align.flow_model.preset): its fragment is
    # "<that key>/<its name>" (flow_model/sea_raft)
    parent, _, leaf = override.key.rpartition(".")
    nested = OmegaConf.select(cfg, parent, default=None) if "." in parent else None
    if isinstance(nested, DictConfig) and leaf in _fragment_params(
        parent.rpartition(".")[2], nested.get("name")
    ):
        return
    candidates = _key_paths(OmegaConf.to_container(cfg))
    for strategy_section in SECTION_KINDS:
        if isinstance(cfg.get(strategy_section), DictConfig):
            name = cfg[strategy_section].get("name")
            candidates += [f"{strategy_section}.{p}" for p in _fragment_params(strategy_section, name)]
    raise RecipeError(
        f"unknown key '{_short(override.key)}' in override '{_short(override.text)}'"
        f"{_closest_key(override.key, candidates)}"
    )


def _closest_key(key: str, candidates: list[str]) -> str:
    # A misspelt leaf is compared with its siblings only; a misspelt section with every key.
    parent, _, leaf = key.rpartition(".")
    siblings = [c.rpartition(".")[2] for c in candidates if c.rpartition(".")[0] == parent]
    if siblings:
        return did_you_mean(leaf, siblings, prefix=f"{parent}." if parent else "")
    return did_you_mean(key, candidates)


def _fragment_params(section: str, name: object) -> list[str]:
    return list(schema_fragments().get(f"{section}/{name}", {}).get("properties", {}))


def _key_paths(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths += [path, *_key_paths(value, f"{path}.")]
    return paths


def _first_line(exc: Exception) -> str:
    # OmegaConf appends "full_key: …, object_type=…" lines to its messages; the key is named separately.
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# --- validation ------------------------------------------------------------------------------------


def validate_recipe(cfg: DictConfig, *, check_names: bool = True) -> None:
    """Raise a one-line :class:`RecipeError` for the first problem of a composed recipe, or a
    :class:`~easi3r.errors.FormulaError` for a ``formula`` rule that cannot give a finite per-frame map.

    ``check_names=False`` skips the registry look-ups (for tests without plug-ins).
    """
    data = _resolved(cfg)
    _check_finite(data, ())
    _raise_first(_core_validator().iter_errors(data), prefix=())
    if check_names:
        for section, kind in SECTION_KINDS.items():
            _check_name(kind, data[section]["name"], f"{section}.name")
    fragments = schema_fragments()
    for section in SECTION_KINDS:
        _check_params(section, data[section], fragments, check_names)
    _check_exporters(data["export"], fragments, check_names)
    _check_rule_formula(cfg, data, check_names)
    if check_names:  # plug-ins refuse what they cannot run (a missing weights file) before any work
        get_plugin_manager().hook.easi3r_check_recipe(recipe=cfg)


def _check_rule_formula(cfg: DictConfig, data: dict[str, Any], check_names: bool) -> None:
    """Refuse a mask formula that cannot give a finite per-frame map (a one-line ``FormulaError``), so a run
    stops before it loads frames or weights. A frame-set capture names its own maps (``names``)."""
    rule = data["rule"]
    if rule["name"] != "formula":  # another rule is a plug-in's code: its fragment checked its params
        return
    from easi3r.formula import EASI3R_RULE, check_rule
    from easi3r.maps import sample_frame_maps, sample_named_maps

    names = getattr(create_strategy(cfg, "capture"), "names", None) if check_names else None
    if names is not None:
        sample = sample_named_maps(names)
    else:
        maps = data["maps"]
        sample = sample_frame_maps(
            corner_fix=maps["corner_fix"], single_pair_std=maps["single_pair_std"]
        ).maps
    check_rule(rule.get("formula", EASI3R_RULE), sample, next(iter(sample.values())).shape[:3])


def _check_exporters(export: dict[str, Any], fragments: dict[str, dict], check_names: bool) -> None:
    """Each ``export.exporters`` item names a registered exporter, listed once (two would write the same
    files), and passes only the params its fragment ``export/<name>`` allows, as a strategy section does."""
    listed: set[str] = set()
    for i, params in enumerate(exporter_sections(export)):
        key, name = f"export.exporters[{i}]", params.pop("name")
        if check_names:
            _check_name("exporters", name, key)
        if name in listed:
            raise RecipeError(f"recipe key '{key}': exporter '{name}' is listed twice; list it once")
        listed.add(name)
        fragment = fragments.get(f"export/{name}")
        if fragment is None:
            if params and check_names:
                raise RecipeError(
                    f"recipe key '{key}.{sorted(params)[0]}' is not allowed: exporter '{name}' takes no "
                    f"parameters (no schema fragment 'export/{name}' is installed)"
                )
            continue
        closed = jsonschema.Draft202012Validator({"additionalProperties": False, **fragment})
        _raise_first(closed.iter_errors(params), prefix=("export", f"exporters[{i}]"))


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise RecipeError(
            f"recipe key '{exc.full_key}' has no value ('???'); set it, e.g. {exc.full_key}=…"
        ) from exc
    except OmegaConfBaseException as exc:
        raise RecipeError(f"recipe key '{exc.full_key}' cannot be resolved: {_first_line(exc)}") from exc


def _check_finite(node: object, path: tuple[object, ...]) -> None:
    # JSON Schema has no NaN or infinity, and every bound holds vacuously for NaN (nan > 0 is False, and
    # so is nan <= 0): YAML's .nan and .inf would pass any "minimum"
    if isinstance(node, float) and not math.isfinite(node):
        raise RecipeError(f"recipe key '{_key_path(path)}' must be a finite number, got {node}")
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, (*path, i))


def _check_name(kind: str, name: str, key: str) -> None:
    known = registry(kind)  # a broken plug-in is a PluginError of its own, not a recipe problem
    try:
        known.get(name)
    except PluginError as exc:
        raise RecipeError(f"recipe key '{key}': {exc}") from None


def _check_params(section: str, body: dict[str, Any], fragments: dict[str, dict], check_names: bool) -> None:
    name = body["name"]
    params = {k: v for k, v in body.items() if k != "name" and k not in core_keys(section)}
    fragment = fragments.get(f"{section}/{name}")
    if fragment is None:
        if params and check_names:
            label = KINDS[SECTION_KINDS[section]].label
            raise RecipeError(
                f"recipe key '{section}.{sorted(params)[0]}' is not allowed: {label} '{name}' takes no "
                f"parameters (no schema fragment '{section}/{name}' is installed)"
            )
        return
    closed = {"additionalProperties": False, **fragment}
    errors = jsonschema.Draft202012Validator(closed).iter_errors(params)
    _raise_first(errors, prefix=(section,), also_allowed=core_keys(section))


def _raise_first(
    errors: Iterable[jsonschema.ValidationError], prefix: tuple[str, ...], also_allowed: Sequence[str] = ()
) -> None:
    # jsonschema's relevance prefers the shallowest error, i.e. the one closest to the user's mistake;
    # best_match would also descend into anyOf branches, whose messages do not describe the whole rule.
    best = max(errors, key=jsonschema.exceptions.relevance, default=None)
    if best is not None:
        raise RecipeError(_describe(best, prefix, also_allowed))


_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _describe(error: jsonschema.ValidationError, prefix: tuple[str, ...], also_allowed: Sequence[str]) -> str:
    path = [*prefix, *error.absolute_path]
    if error.validator == "additionalProperties":
        return _describe_extra_key(error, path, also_allowed)
    if error.validator == "required":
        missing = _key_path([*path, next(k for k in error.validator_value if k not in error.instance)])
        fix = "add it" if path else "add it, or start the recipe with 'extends: easi3r_dust3r'"
        return f"recipe key '{missing}' is required but missing; {fix}"
    return _describe_value(error, path)


def _describe_extra_key(
    error: jsonschema.ValidationError, path: list[str | int], also_allowed: Sequence[str]
) -> str:
    """A key the schema does not allow: the first such key, with a did-you-mean hint or the allowed keys."""
    allowed = [*error.schema.get("properties", {}), *also_allowed]
    extras = sorted(k for k in error.instance if k not in allowed)
    if not extras:  # the fragment uses patternProperties: its own message says more than we can
        return f"recipe key '{_key_path(path)}' is invalid: {one_line(error.message)}"
    extra = _key_path([*path, extras[0]])
    hint = did_you_mean(extras[0], allowed, prefix=f"{_key_path(path)}." if path else "")
    return f"recipe key '{extra}' is not allowed{hint or '; allowed: ' + (', '.join(allowed) or 'none')}"


def _describe_value(error: jsonschema.ValidationError, path: list[str | int]) -> str:
    """A wrong value: its type, choice, bound or pattern, as the rule it breaks asks for it."""
    rule, value, schema = error.validator_value, error.instance, error.schema
    subject = f"recipe key '{_key_path(path)}'" if path else "the recipe"
    got = f", got {_show(value)}"
    if error.validator == "type":
        return f"{subject} must be {' or '.join(rule) if isinstance(rule, list) else rule}{got}"
    if error.validator == "enum":
        hint = did_you_mean(value, [str(v) for v in rule]) if isinstance(value, str) else ""
        return f"{subject} must be one of {', '.join(_plain(v) for v in rule)}{got}{hint}"
    if error.validator in _BOUNDS:
        return f"{subject} must be {_BOUNDS[error.validator]} {rule}{got}"
    if error.validator in ("pattern", "anyOf", "oneOf", "const") and "description" in schema:
        return f"{subject} must be {schema['description']}{got}"
    return f"{subject} is invalid: {one_line(error.message)}"


def _key_path(parts: Iterable[object]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return _short(text)


def _plain(value: object) -> str:
    return _short(value if isinstance(value, str) else json.dumps(value))


def _show(value: object) -> str:
    return _short(f"'{value}'" if isinstance(value, str) else json.dumps(value))


_QUOTED = 60  # longest key or value an error message quotes: a message never replays a whole file


def _short(text: object) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _QUOTED else f"{text[: _QUOTED - 1]}…"


# --- use -------------------------------------------------------------------------------------------


def create_strategy(cfg: DictConfig, section: str) -> Any:
    """Build the strategy a section names: ``factory(**params)`` without ``name`` and consumed core keys."""
    if section not in SECTION_KINDS:
        raise ValueError(f"{section!r} is not a strategy section; sections: {', '.join(SECTION_KINDS)}")
    body = OmegaConf.to_container(cfg[section], resolve=True)
    params = {k: v for k, v in body.items() if k not in CONSUMED_KEYS.get(section, ())}
    return registry(SECTION_KINDS[section]).create(params, key=section)


def exporter_sections(export: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of a resolved ``export`` section's ``exporters`` as ``{name: X, **params}`` sections: an
    item is an exporter's name (its default params) or such a mapping."""
    return [{"name": item} if isinstance(item, str) else dict(item) for item in export["exporters"]]


def resolved_recipe_yaml(cfg: DictConfig) -> str:
    """The recipe with interpolations resolved, plus a ``plugins:`` block naming the plug-in,
    distribution and version behind every chosen strategy (written as ``run.yaml``)."""
    data = _resolved(cfg)
    data.pop("plugins", None)  # a run.yaml used as a recipe: describe this run's plug-ins, not the old ones
    plugins: dict[str, Any] = {
        section: _origin(kind, data[section]["name"]) for section, kind in SECTION_KINDS.items()
    }
    plugins["exporters"] = [_origin("exporters", item["name"]) for item in exporter_sections(data["export"])]
    return OmegaConf.to_yaml({**data, "plugins": plugins})


def _origin(kind: str, name: str) -> dict[str, Any]:
    return {"name": name, **registry(kind).provider(name)._asdict()}
