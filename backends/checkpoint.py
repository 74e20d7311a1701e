"""Reading and writing CroCo-family checkpoints without executing anything stored in them.

Three sources are accepted (:func:`load_checkpoint`):

* an official ``.pth``/``.pt`` file: a dict with ``args`` (an ``argparse.Namespace`` whose ``.model`` is
  a constructor call string) and ``model`` (the state dict), or a bare state dict. It is read with
  ``torch.load(weights_only=True)``, which only rebuilds tensors, containers and the globals listed in
  :data:`SAFE_GLOBALS`; the constructor string is parsed by :func:`parse_constructor`, never ``eval``-ed.
  For a bare state dict the architecture is inferred from the key shapes.
* a hub folder: ``config.json`` (the constructor keyword arguments) and ``model.safetensors``;
  :func:`convert_to_hub_folder` writes one from a ``.pth``.
* a hub id such as ``naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt``, downloaded with ``huggingface_hub``
  when it is installed (``pip install easi3r[hub]``).

:func:`build_model` then checks that every key and shape fits :class:`~easi3r.backends.croco.CroCoStereo`
before allocating it, after the few key fix-ups of :func:`filter_state_dict`. Every problem with the
user's file is a one-line :class:`~easi3r.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from easi3r.errors import CheckpointError

if TYPE_CHECKING:
    from easi3r.backends.croco import CroCoStereo

# Class names a stored constructor string may call; each is built as CroCoStereo.
ALLOWED_CONSTRUCTORS = frozenset({"AsymmetricCroCo3DStereo"})

# Globals a ``.pth`` may reference beyond what torch's weights-only unpickler already allows (tensor
# rebuilding, OrderedDict, primitive containers). ``argparse.Namespace`` is there because the official
# checkpoints store their training arguments in one; building it only sets attributes, it runs no code.
# Anything else is refused unless the caller passes it in ``extra_safe_globals``.
SAFE_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)

# Attention heads of the widths used by released CroCo-family models (all head dims 64, except the
# 512-wide small CroCo decoder with 16 heads of 32); other widths need an explicit constructor.
KNOWN_NUM_HEADS = {384: 6, 512: 16, 768: 12, 1024: 16}

HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"

# The official DPT head registers each of its four "layer_rn" convolutions twice, as
# ``scratch.layerN_rn`` and ``scratch.layer_rn.{N-1}``; safetensors exports keep only the first name.
_LAYER_N_RN = re.compile(r"^(.*\.scratch\.)layer(\d+)_rn\.(\w+)$")
_LAYER_RN_N = re.compile(r"^(.*\.scratch\.)layer_rn\.(\d+)\.(\w+)$")
_DDP_PREFIX = "module."
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".json"}
_LITERAL_NAMES = {"inf": math.inf, "nan": math.nan}
_MAX_CONSTRUCTOR_CHARS = 10_000  # the official strings are ~400 characters; this bounds parsing work


# ---------------------------------------------------------------------------------------------------
# The constructor string


def parse_constructor(text: str, allowed: Iterable[str] = ALLOWED_CONSTRUCTORS) -> tuple[str, dict[str, Any]]:
    """Parse ``"ClassName(key=literal, ...)"`` into ``(ClassName, kwargs)`` without evaluating it.

    Only a call of a bare class name in ``allowed`` with keyword arguments is accepted; values may be
    str, int, float, bool, None, tuples/lists of those, the names ``inf``/``nan`` and a unary sign on a
    number. Anything else raises :class:`CheckpointError` quoting the offending part.
    """
    allowed = frozenset(allowed)
    source = text.strip()
    if len(text) > _MAX_CONSTRUCTOR_CHARS:
        raise CheckpointError(
            f"constructor string is {len(text)} characters long (at most {_MAX_CONSTRUCTOR_CHARS})"
        )
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise CheckpointError(f"constructor string does not parse: {exc.msg} in {_shorten(text)!r}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise CheckpointError(f"constructor string does not parse: {_first_line(exc)}") from None
    call = tree.body
    if not isinstance(call, ast.Call):
        raise CheckpointError(
            f"constructor string must be a call like Name(key=value, ...), got {_quote(call, source)}"
        )
    if not isinstance(call.func, ast.Name):
        raise CheckpointError(f"constructor must call a bare class name, not {_quote(call.func, source)}")
    name = call.func.id
    if name not in allowed:
        raise CheckpointError(f"constructor class {name!r} is not one of {', '.join(sorted(allowed))}")
    if call.args:
        raise CheckpointError(
            f"constructor has a positional argument {_quote(call.args[0], source)}; only key=value"
        )
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise CheckpointError(f"constructor unpacks {_quote(keyword, source)}; only key=value is allowed")
        if keyword.arg in kwargs:
            raise CheckpointError(f"constructor repeats the keyword {keyword.arg!r}")
        kwargs[keyword.arg] = _literal(keyword.value, source, keyword.arg)
    return name, kwargs


def _literal(node: ast.expr, source: str, key: str) -> Any:
    """The value of an allowed literal node; the reason it is refused otherwise."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _LITERAL_NAMES:
        return _LITERAL_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, source, key)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    elif isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(item, source, key) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    elif isinstance(node, ast.Name):
        raise CheckpointError(
            f"constructor argument {key}= uses the name {node.id!r}; only inf and nan are allowed"
        )
    raise CheckpointError(f"constructor argument {key}= is not a literal: {_quote(node, source)}")


def _quote(node: ast.AST, source: str) -> str:
    segment = ast.get_source_segment(source, node) or ast.unparse(node)
    return f"{type(node).__name__} {_shorten(segment)!r}"


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(
    source: str | os.PathLike[str],
    *,
    constructor: str | Mapping[str, Any] | None = None,
    extra_safe_globals: Iterable[Any] = (),
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a checkpoint → ``(constructor kwargs, state dict)``, nothing executed.

    ``source`` is a ``.pth``/``.pt`` file, a ``.safetensors`` file, a hub folder or a hub id (see the
    module docstring). The constructor comes from the checkpoint (``args.model`` or ``config.json``) or,
    for a bare state dict, is inferred from the key shapes. ``constructor`` (a constructor string or a
    kwargs mapping) wins over both, key by key; with a bare state dict of unusual width pass at least
    ``{"enc_num_heads": …, "dec_num_heads": …}``. ``extra_safe_globals`` extends :data:`SAFE_GLOBALS`
    for ``.pth`` files that store other plain-data classes; only add classes you trust.
    """
    given = _given_kwargs(constructor)
    path = Path(source)
    if path.is_dir():
        kwargs, state_dict = _read_hub_folder(path)
    elif path.is_file() and path.suffix == ".safetensors":
        state_dict = _read_safetensors(path)
        kwargs = _infer_constructor(state_dict, given, path)
    elif path.is_file():
        kwargs, state_dict = _read_torch_file(path, given, tuple(extra_safe_globals))
    elif _HUB_ID.match(str(source)) and path.suffix not in _FILE_SUFFIXES:
        kwargs, state_dict = _read_hub_folder(_download(str(source)))
    else:
        raise CheckpointError(f"checkpoint {source}: no such file or folder")
    return {**kwargs, **given}, state_dict


def _given_kwargs(constructor: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if constructor is None:
        return {}
    if isinstance(constructor, str):
        return parse_constructor(constructor)[1]
    return dict(constructor)


def _read_torch_file(
    path: Path, given: Mapping[str, Any], extra_safe_globals: tuple[Any, ...]
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    is_zip = _sniff_torch_file(path)
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra_safe_globals]):
            # mmap keeps the 2 GB of weights in the page cache instead of a second copy in memory;
            # only the zip format (torch >= 1.6) supports it.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            # ``from None``: torch's own message suggests weights_only=False, the one thing not to do here
            raise CheckpointError(
                f"checkpoint {path} refers to {refused.group(1)}, which is not an allowed global; nothing was "
                "executed (if it is plain data from a source you trust, pass it in extra_safe_globals)"
            ) from None
        detail = str(exc).split("WeightsUnpickler error:")[-1]
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint: {_first_line(Exception(detail))}"
        ) from None
    except EOFError:
        raise CheckpointError(f"checkpoint {path} is truncated: the file ends inside its data") from None
    except Exception as exc:  # any other failure to decode an untrusted file is a bad file, not a bug
        raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(exc)}") from None
    state_dict, stored = _unpack(obj, path)
    if stored is not None:
        try:
            return parse_constructor(stored)[1], state_dict
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path}: args.model: {exc}") from None
    return _infer_constructor(state_dict, given, path), state_dict


def _sniff_torch_file(path: Path) -> bool:
    """Refuse files that are not torch checkpoints before torch reports them obscurely; True for zip."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty")
    if head.startswith(b"PK"):
        # a zip's table of contents is at its end, so a cut-off download has none
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: its zip directory is missing")
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"checkpoint {path} is corrupt: {_first_line(exc)}") from None
        if not any(name.endswith("/data.pkl") for name in names):
            raise CheckpointError(
                f"checkpoint {path} is a zip archive but not a PyTorch checkpoint (no data.pkl)"
            )
        # torch's safe loader refuses scripted modules with advice to drop weights_only
        if any(name.endswith("/constants.pkl") for name in names):
            raise CheckpointError(f"checkpoint {path} is a TorchScript module, not a checkpoint of weights")
        return True
    if head[0] != 0x80:  # the protocol marker that starts every pickle, hence every legacy torch file
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)"
        )
    return False


def _unpack(obj: Any, path: Path) -> tuple[dict[str, Tensor], str | None]:
    """(state dict, stored constructor string or None) from what a ``.pth`` holds."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    stored = None
    if isinstance(obj.get("model"), Mapping):
        state_dict = obj["model"]
        args = obj.get("args")
        stored = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
        if stored is not None and not isinstance(stored, str):
            raise CheckpointError(f"checkpoint {path}: args.model is a {type(stored).__name__}, not a string")
    else:
        state_dict = obj
    _check_tensors(state_dict, path)
    return dict(state_dict), stored


def _check_tensors(state_dict: Mapping[Any, Any], path: Path) -> None:
    if not state_dict:
        raise CheckpointError(f"checkpoint {path} holds no weights")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"checkpoint {path} is not a state dict: {key!r} holds a {type(value).__name__}, not a tensor"
            )


def _read_hub_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    config_path, weights_path = folder / HUB_CONFIG, folder / HUB_WEIGHTS
    if not config_path.is_file():
        raise CheckpointError(
            f"checkpoint folder {folder} has no {HUB_CONFIG}: a hub folder holds {HUB_CONFIG} and {HUB_WEIGHTS}"
        )
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint folder {folder} has {HUB_CONFIG} but no {HUB_WEIGHTS}")
    try:
        # Python's json reads the non-standard Infinity that the hub's config files use for depth_mode
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{config_path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} cannot be read: {_first_line(exc)}") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{config_path} must hold an object of constructor arguments, not {type(config).__name__}"
        )
    # JSON has no tuples; every sequence argument of the constructor (img_size, depth_mode, conf_mode)
    # is a tuple in the official constructor string
    return {key: _lists_to_tuples(value) for key, value in config.items()}, _read_safetensors(weights_path)


def _lists_to_tuples(value: Any) -> Any:
    return tuple(_lists_to_tuples(item) for item in value) if isinstance(value, list) else value


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        state_dict = load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError and OSError: the file, not the code, is at fault
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file: {_first_line(exc)}"
        ) from None
    _check_tensors(state_dict, path)
    return state_dict


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"checkpoint {repo_id} is not a file or folder; to download hub ids install huggingface_hub "
            "(pip install easi3r[hub])"
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[HUB_CONFIG, HUB_WEIGHTS]))
    except Exception as exc:  # network, authentication, unknown repository: all reported the same way
        raise CheckpointError(
            f"checkpoint {repo_id} cannot be downloaded from the hub: {_first_line(exc)}"
        ) from None


def _infer_constructor(
    state_dict: Mapping[str, Tensor], given: Mapping[str, Any], path: Path
) -> dict[str, Any]:
    """Constructor kwargs of a bare state dict, from its key shapes; ``given`` values win.

    The position embedding, image size and output modes are not visible in the weights and are left to
    the constructor's defaults (RoPE100, 512, pts3d with exp depth and confidence).
    """
    sd = {key.removeprefix(_DDP_PREFIX): value for key, value in state_dict.items()}
    enc_embed_dim, _, patch_size, _ = _inference_key(sd, "patch_embed.proj.weight", 4, path).shape
    dec_embed_dim = _inference_key(sd, "decoder_embed.weight", 2, path).shape[0]
    mlp_hidden = _inference_key(sd, "enc_blocks.0.mlp.fc1.weight", 2, path).shape[0]
    mlp_ratio = mlp_hidden / enc_embed_dim
    inferred: dict[str, Any] = dict(
        head_type="dpt" if any(key.startswith("downstream_head1.dpt.") for key in sd) else "linear",
        enc_embed_dim=enc_embed_dim, enc_depth=_depth(sd, "enc_blocks"),
        enc_num_heads=KNOWN_NUM_HEADS.get(enc_embed_dim),
        dec_embed_dim=dec_embed_dim, dec_depth=_depth(sd, "dec_blocks"),
        dec_num_heads=KNOWN_NUM_HEADS.get(dec_embed_dim),
        mlp_ratio=int(mlp_ratio) if mlp_ratio.is_integer() else mlp_ratio,
        norm_im2_in_dec="dec_blocks.0.norm_y.weight" in sd, patch_size=patch_size,
    )  # fmt: skip
    kwargs = {**inferred, **given}
    for part, width in (("enc", enc_embed_dim), ("dec", dec_embed_dim)):
        if kwargs[f"{part}_num_heads"] is None:
            raise CheckpointError(
                f"checkpoint {path} stores no constructor and the heads of width {width} are unknown "
                f"(known: {', '.join(map(str, sorted(KNOWN_NUM_HEADS)))}); pass constructor={{'{part}_num_heads': …}}"
            )
    return kwargs


def _inference_key(state_dict: Mapping[str, Tensor], key: str, ndim: int, path: Path) -> Tensor:
    tensor = state_dict.get(key)
    if tensor is None or tensor.ndim != ndim:
        raise CheckpointError(
            f"checkpoint {path} stores no constructor and its architecture cannot be inferred: "
            f"no {ndim}-D {key}"
        )
    return tensor


def _depth(state_dict: Mapping[str, Tensor], blocks: str) -> int:
    pattern = re.compile(rf"^{blocks}\.(\d+)\.")
    return 1 + max((int(m.group(1)) for key in state_dict if (m := pattern.match(key))), default=-1)


# ---------------------------------------------------------------------------------------------------
# Fitting the network


def filter_state_dict(state_dict: Mapping[str, Tensor], model_keys: Iterable[str]) -> dict[str, Tensor]:
    """Map a checkpoint's keys onto the model's; the only key rewriting this project does.

    1. A leading ``module.`` (a checkpoint saved from a DistributedDataParallel wrapper) is stripped
       where the model expects the key without it.
    2. If the checkpoint has no ``dec_blocks2.*`` at all (a one-decoder checkpoint), the second decoder
       gets a copy of ``dec_blocks.*``, as the official loader does.
    3. For the DPT head's aliased convolutions (``scratch.layerN_rn.*`` is ``scratch.layer_rn.{N-1}.*``),
       a name the model expects but the checkpoint lacks is filled from the other name; safetensors
       exports store only one of the two.

    Keys the model does not know are kept, so that a strict check reports them. Tensors are shared, not
    copied; the input is not modified.
    """
    wanted = set(model_keys)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_DDP_PREFIX) and key not in wanted and key.removeprefix(_DDP_PREFIX) in wanted:
            key = key.removeprefix(_DDP_PREFIX)
        out[key] = value
    if not any(key.startswith("dec_blocks2.") for key in out):
        for key, value in list(out.items()):
            twin = "dec_blocks2." + key.removeprefix("dec_blocks.")
            if key.startswith("dec_blocks.") and twin in wanted:
                out[twin] = value
    for key in wanted - out.keys():
        alias = _dpt_alias(key)
        if alias in out:
            out[key] = out[alias]
    return out


def _dpt_alias(key: str) -> str | None:
    """The other name of an aliased DPT convolution parameter, or None."""
    if m := _LAYER_N_RN.match(key):
        return f"{m.group(1)}layer_rn.{int(m.group(2)) - 1}.{m.group(3)}"
    if m := _LAYER_RN_N.match(key):
        return f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.{m.group(3)}"
    return None


def build_model(
    kwargs: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    *,
    device: str | torch.device = "cpu",
    source: str | os.PathLike[str] | None = None,
) -> CroCoStereo:
    """Construct ``CroCoStereo(**kwargs)`` on ``device``, load ``state_dict`` strictly, return it in eval mode.

    Keys and shapes are checked (after :func:`filter_state_dict`) before any memory is allocated; a
    mismatch raises :class:`CheckpointError` naming ``source``, the first missing and first unexpected
    key, or the key whose shape differs.
    """
    model, fitted = _fit(kwargs, state_dict, source)
    # every tensor of the network is in its state dict (RoPE tables are computed on the fly), so the
    # uninitialised storage of to_empty is overwritten entirely by the load below
    persistent = model.state_dict().keys()
    stray = [name for name, _ in model.named_buffers() if name not in persistent]
    if stray:
        raise RuntimeError(
            f"CroCoStereo has buffers outside its state dict ({stray[0]}); build_model cannot skip init"
        )
    model = model.to_empty(device=device)
    model.load_state_dict(fitted, strict=True)
    return model.eval()


def _fit(
    kwargs: Mapping[str, Any], state_dict: Mapping[str, Tensor], source: str | os.PathLike[str] | None
) -> tuple[CroCoStereo, dict[str, Tensor]]:
    """(the network on the meta device, the filtered state dict), once every key and shape matches."""
    # imported on use, so that reading and converting checkpoints does not load the network code
    from easi3r.backends.croco import CroCoStereo

    where = f"checkpoint {source}" if source is not None else "checkpoint"
    label = _label(kwargs)
    try:
        with torch.device("meta"):
            model = CroCoStereo(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot build {label}: {_first_line(exc)}") from None
    expected = model.state_dict()
    fitted = filter_state_dict(state_dict, expected.keys())
    missing = [key for key in expected if key not in fitted]
    unexpected = [key for key in fitted if key not in expected]
    if missing or unexpected:
        first_missing = f" (first: {missing[0]})" if missing else ""
        first_unexpected = f" (first: {unexpected[0]})" if unexpected else ""
        raise CheckpointError(
            f"{where} does not fit {label}: {len(missing)} missing keys{first_missing}, "
            f"{len(unexpected)} unexpected{first_unexpected}"
        )
    for key, reference in expected.items():
        if fitted[key].shape != reference.shape:
            raise CheckpointError(
                f"{where} does not fit {label}: {key} has shape {_shape(fitted[key])} in the checkpoint, "
                f"{_shape(reference)} in the network"
            )
    return model, fitted


def _label(kwargs: Mapping[str, Any]) -> str:
    """A short constructor description for messages: the arguments that decide the key layout."""
    shown = ("head_type", "enc_embed_dim", "enc_depth", "dec_embed_dim", "dec_depth")
    return "AsymmetricCroCo3DStereo(" + ", ".join(f"{k}={kwargs[k]!r}" for k in shown if k in kwargs) + ")"


def _shape(tensor: Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def load_model(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    constructor: str | Mapping[str, Any] | None = None,
    extra_safe_globals: Iterable[Any] = (),
) -> tuple[CroCoStereo, dict[str, Any]]:
    """:func:`load_checkpoint` then :func:`build_model` → ``(model in eval mode, constructor kwargs)``."""
    kwargs, state_dict = load_checkpoint(
        source, constructor=constructor, extra_safe_globals=extra_safe_globals
    )
    return build_model(kwargs, state_dict, device=device, source=source), kwargs


# ---------------------------------------------------------------------------------------------------
# Writing


def convert_to_hub_folder(
    src: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    constructor: str | Mapping[str, Any] | None = None,
    extra_safe_globals: Iterable[Any] = (),
) -> Path:
    """Write ``src`` (any source :func:`load_checkpoint` reads) as a hub folder and return its path.

    ``dst_dir/config.json`` gets the constructor kwargs (tuples become lists, infinities ``Infinity``)
    and ``dst_dir/model.safetensors`` the state dict, checked against the network and normalised by
    :func:`filter_state_dict`. safetensors cannot store one tensor under two names, so the
    ``scratch.layer_rn.{N}.*`` aliases of the DPT head are dropped and ``scratch.layerN_rn.*`` kept
    (the choice the hub exports make); loading restores them. The folder appears complete or not at all:
    it is written beside ``dst_dir`` under a temporary name and renamed. ``dst_dir`` must not exist.
    """
    dst = Path(dst_dir)
    if dst.exists():
        raise CheckpointError(f"cannot convert {src}: {dst} already exists")
    kwargs, state_dict = load_checkpoint(src, constructor=constructor, extra_safe_globals=extra_safe_globals)
    _, fitted = _fit(kwargs, state_dict, src)
    try:
        config = json.dumps(kwargs, indent=2)
    except TypeError as exc:
        raise CheckpointError(
            f"cannot convert {src}: its constructor arguments are not JSON: {exc}"
        ) from None
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()
    for key, value in fitted.items():
        if _LAYER_RN_N.match(key) and _dpt_alias(key) in fitted:
            continue
        value = value.contiguous()
        # tensors that still share memory (the dec_blocks2 copies of a one-decoder checkpoint) must be
        # stored separately
        if value.untyped_storage().data_ptr() in storages:
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        (tmp / HUB_CONFIG).write_text(config + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / HUB_WEIGHTS), metadata={"format": "pt"})
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
