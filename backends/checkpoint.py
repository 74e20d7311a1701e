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

Whatever the source, the constructor arguments are checked by :func:`check_constructor` as soon as
they are read, before anything is built: known names only, positive integers, widths divisible by the
heads, a position embedding, image size, head and output modes the network supports, and an arithmetic
parameter count (:func:`estimate_parameters`) below :data:`MAX_PARAMETERS`, so that a config asking for
a billion layers is refused at once instead of filling the memory.

Weights must be float32, float16, bfloat16 or float64 (integer, boolean and complex tensors are
refused, naming the first such key). :func:`build_model` casts them to float32, the network's dtype, as
it copies them in (half-precision checkpoints therefore load exactly, with twice their file size in
memory); :func:`convert_to_hub_folder` stores them as they are, so a converted half-precision checkpoint
stays half precision on disk.

:func:`build_model` then checks that every key and shape fits :class:`~easi3r.backends.croco.CroCoStereo`
before allocating it, after the few key fix-ups of :func:`filter_state_dict`. Every problem with the
user's file is a one-line :class:`~easi3r.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import errno
import json
import math
import os
import pickle
import re
import reprlib
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from easi3r.errors import ArchitectureError, CheckpointError

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
_MAX_CONFIG_BYTES = 1_000_000  # the hub's config.json files are ~600 bytes; this bounds reading work

# The arguments CroCoStereo accepts, with its defaults (those of the official AsymmetricCroCo3DStereo).
# Kept here rather than read from the class so that checking a config needs no network code; a test
# keeps the two equal.
CONSTRUCTOR_DEFAULTS: dict[str, Any] = dict(
    pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", img_size=(512, 512), head_type="linear",
    output_mode="pts3d", depth_mode=("exp", -math.inf, math.inf), conf_mode=("exp", 1, math.inf),
    enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
    mlp_ratio=4.0, norm_im2_in_dec=True, patch_size=16, landscape_only=False, freeze="none",
)  # fmt: skip

# Size limits of a config, checked before anything is built. The largest released model (ViT-L encoder,
# base decoder, DPT heads) has 571M parameters, 2.3 GB in float32; 4e9 parameters (16 GB in float32)
# leaves room for bigger research variants while refusing a typo such as enc_depth=1000000000, which
# would otherwise allocate until the machine runs out of memory (even the meta-device build would hang
# creating a billion modules).
MAX_PARAMETERS = 4_000_000_000
# The official encoders have 24 layers and decoders 12. A thin network can be deep and still small in
# parameters, but every layer is a Python module and a step of the forward loop: more than 256 is a typo.
MAX_DEPTH = 256
# The official models take 224- or 512-pixel images; larger sides only multiply the attention cost.
MAX_IMG_SIDE = 4096
# Beyond this, Python ints meet float arithmetic in the size estimate; no real width comes near it.
_MAX_INT = 2**31 - 1
_PATCH_EMBEDS = ("ManyAR_PatchEmbed", "PatchEmbedDust3R")
_HEAD_TYPES = ("dpt", "linear")
_DEPTH_MODES = ("exp", "linear", "square")  # the activations of heads.postprocess
_CONF_MODES = ("exp", "sigmoid")
_DPT_PATCH = 16  # the DPT head upsamples its token maps by a fixed 16
_DPT_MIN_DEC_DEPTH = 10  # the DPT head taps decoder layers L/2, 3L/4 and L and needs L > 9
# The dtypes weights may have. Others are refused: an int32 state dict is copied into the float network
# without complaint and gives NaN at run time.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# values quoted in messages are cut short (a config value may be a 100,000-character string or nested
# 500 lists deep); reprlib bounds both length and depth
_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxtuple = 40, 40, 3, 4, 4


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
# Checking the constructor arguments


def check_constructor(kwargs: Mapping[str, Any], where: str = "constructor") -> None:
    """Refuse constructor arguments that CroCoStereo cannot build or run, before anything is built.

    Missing arguments take :data:`CONSTRUCTOR_DEFAULTS`. Raises :class:`CheckpointError` as
    ``"{where}: {problem}"``, naming the argument: unknown names, values of the wrong type or range
    (:func:`_check_arguments`), an estimated size over :data:`MAX_PARAMETERS`, a width the heads do not
    divide, a depth over :data:`MAX_DEPTH`, an image size that is not a multiple of the patch size.
    """
    _check_arguments(kwargs, where)
    c = {**CONSTRUCTOR_DEFAULTS, **kwargs}
    # the size first: a huge config must be refused with its size, whatever else is wrong with it
    count = estimate_parameters(c)
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where}: {_label(c)} would have about {count:.2g} parameters ({_bytes(4 * count)} in float32); "
            f"at most {MAX_PARAMETERS:.0e} ({_bytes(4 * MAX_PARAMETERS)}) are allowed"
        )
    for part in ("enc", "dec"):
        dim, heads, depth = c[f"{part}_embed_dim"], c[f"{part}_num_heads"], c[f"{part}_depth"]
        if dim % heads:
            raise CheckpointError(
                f"{where}: {part}_embed_dim={dim} is not divisible by {part}_num_heads={heads}"
            )
        if (dim // heads) % 4:
            # the 2D RoPE rotates half of each head by the row and half by the column, in pairs
            raise CheckpointError(
                f"{where}: {part}_embed_dim / {part}_num_heads = {dim // heads} channels per head; "
                "the 2D RoPE needs a multiple of 4"
            )
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{where}: {part}_depth={depth} is more than {MAX_DEPTH} layers")
        if _hidden(dim, c["mlp_ratio"]) < 1:
            raise CheckpointError(
                f"{where}: mlp_ratio={c['mlp_ratio']!r} leaves {part}_embed_dim={dim} no MLP units"
            )
    if c["head_type"] == "dpt":
        if c["dec_depth"] < _DPT_MIN_DEC_DEPTH:
            raise CheckpointError(
                f"{where}: head_type='dpt' needs dec_depth > {_DPT_MIN_DEC_DEPTH - 1}, got {c['dec_depth']}"
            )
        if c["patch_size"] != _DPT_PATCH:
            raise CheckpointError(
                f"{where}: head_type='dpt' needs patch_size={_DPT_PATCH} (its upsampling is fixed), "
                f"got {c['patch_size']}"
            )
    size, patch = c["img_size"], c["patch_size"]
    if any(side % patch for side in ((size, size) if isinstance(size, int) else size)):
        raise CheckpointError(f"{where}: img_size {_show(size)} is not a multiple of patch_size={patch}")


def _check_arguments(kwargs: Mapping[str, Any], where: str) -> None:
    """Each argument on its own: known name, type and range (no relations between arguments)."""
    for key, value in kwargs.items():
        if key not in CONSTRUCTOR_DEFAULTS:
            raise CheckpointError(
                f"{where}: cannot build AsymmetricCroCo3DStereo: unknown argument {_show(key)}"
            )
        requirement = _ARGUMENT_CHECKS[key](value)
        if requirement:
            raise CheckpointError(f"{where}: {key} must be {requirement}, got {_show(value)}")


def _bytes(count: float) -> str:
    """``count`` bytes in decimal units, three digits."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    power = 0
    while count >= 1000 and power < len(units) - 1:
        count, power = count / 1000, power + 1
    return f"{count:.3g} {units[power]}"


def _show(value: Any) -> str:
    return _SHOW.repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """An int or float, not bool or NaN (ints of any size: math functions would overflow on them)."""
    return _is_int(value) or (isinstance(value, float) and not math.isnan(value))


def _is_finite(value: int | float) -> bool:
    return _is_int(value) or math.isfinite(value)


def _positive_int(value: Any) -> str | None:
    if not _is_int(value) or value <= 0:
        return "a positive integer"
    return f"at most {_MAX_INT}" if value > _MAX_INT else None


def _pos_embed(value: Any) -> str | None:
    # the RoPE frequencies are base ** (-i / d): a base of 0 or inf gives inf/NaN angles at run time
    requirement = "'RoPE<base>' with a positive base, such as 'RoPE100'"
    if not isinstance(value, str) or not value.startswith("RoPE") or len(value) > 40:
        return requirement
    try:
        base = float(value[len("RoPE") :])
    except ValueError:
        return requirement
    return None if math.isfinite(base) and base > 0 else requirement


def _img_size(value: Any) -> str | None:
    sides = (value, value) if _is_int(value) else value
    if (
        isinstance(sides, (tuple, list))
        and len(sides) == 2
        and all(_is_int(side) and 0 < side <= MAX_IMG_SIDE for side in sides)
    ):
        return None
    return f"a positive integer or a (height, width) pair of them, at most {MAX_IMG_SIDE}"


def _mode(value: Any, names: tuple[str, ...]) -> tuple[str, Any, Any] | None:
    """(mode, vmin, vmax) of a depth/conf mode triple, or None if it is not one."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        return None
    mode, vmin, vmax = value
    if not isinstance(mode, str) or mode not in names or not _is_real(vmin) or not _is_real(vmax):
        return None
    return mode, vmin, vmax


def _depth_mode(value: Any) -> str | None:
    parsed = _mode(value, _DEPTH_MODES)
    if parsed is None or parsed[1:] != (-math.inf, math.inf):  # heads.py supports unbounded depth only
        return f"(mode, -inf, inf) with mode one of {', '.join(map(repr, _DEPTH_MODES))}"
    return None


def _conf_mode(value: Any) -> str | None:
    parsed = _mode(value, _CONF_MODES)
    # exp: vmin + exp(x), capped at vmax (may be inf); sigmoid: scaled to [vmin, vmax] (must be finite)
    if (
        parsed is None
        or not _is_finite(parsed[1])
        or not parsed[1] < parsed[2]
        or (parsed[0] == "sigmoid" and not _is_finite(parsed[2]))
    ):
        return (
            f"(mode, vmin, vmax) with mode one of {', '.join(map(repr, _CONF_MODES))}, a finite vmin and "
            "vmax > vmin (inf only for 'exp')"
        )
    return None


def _choice(*names: str) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in names:
            return None
        return f"one of {', '.join(map(repr, names))}" if len(names) > 1 else repr(names[0])

    return check


_ARGUMENT_CHECKS: dict[str, Any] = {
    "pos_embed": _pos_embed,
    "patch_embed_cls": _choice(*_PATCH_EMBEDS),
    "img_size": _img_size,
    "head_type": _choice(*_HEAD_TYPES),
    "output_mode": _choice("pts3d"),  # the only output this network computes
    "depth_mode": _depth_mode,
    "conf_mode": _conf_mode,
    **dict.fromkeys(
        ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads"),
        _positive_int,
    ),
    "patch_size": _positive_int,
    "mlp_ratio": lambda v: None if _is_real(v) and 0 < v < math.inf else "a positive number",
    "norm_im2_in_dec": lambda v: None if isinstance(v, bool) else "true or false",
    "landscape_only": lambda v: None if isinstance(v, bool) else "true or false",
    "freeze": lambda v: None if isinstance(v, str) else "a string",  # a training setting, ignored here
}


def _hidden(dim: int, mlp_ratio: float) -> int:
    """The MLP width CroCoStereo builds, ``int(dim * mlp_ratio)``; capped so that a huge product stays
    an int (the size check then refuses it)."""
    product = dim * mlp_ratio
    return int(product) if product < 2**62 else 2**62


def estimate_parameters(kwargs: Mapping[str, Any]) -> int:
    """The parameter count of ``CroCoStereo(**kwargs)``, by arithmetic alone (nothing is built).

    Exact for every valid config (a test compares it with built networks); ``kwargs`` must have passed
    :func:`_check_arguments`. Missing arguments take :data:`CONSTRUCTOR_DEFAULTS`.
    """
    c = {**CONSTRUCTOR_DEFAULTS, **kwargs}
    enc, dec, patch = c["enc_embed_dim"], c["dec_embed_dim"], c["patch_size"]

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + n_out

    def mlp(dim: int) -> int:
        hidden = _hidden(dim, c["mlp_ratio"])
        return linear(dim, hidden) + linear(hidden, dim)

    def self_attention(dim: int) -> int:
        return linear(dim, 3 * dim) + linear(dim, dim)

    norm = 2  # LayerNorm: weight and bias per channel
    enc_block = 2 * norm * enc + self_attention(enc) + mlp(enc)
    dec_block = (
        (3 + int(c["norm_im2_in_dec"])) * norm * dec + self_attention(dec) + 4 * linear(dec, dec) + mlp(dec)
    )
    head = _dpt_parameters((enc, dec, dec, dec)) if c["head_type"] == "dpt" else linear(dec, 4 * patch**2)
    return (
        3 * patch**2 * enc + enc  # patch embedding convolution
        + dec  # mask token
        + c["enc_depth"] * enc_block + norm * enc
        + linear(enc, dec)  # decoder_embed
        + 2 * c["dec_depth"] * dec_block + norm * dec
        + 2 * head
    )  # fmt: skip


def _dpt_parameters(dims: tuple[int, int, int, int]) -> int:
    """Parameters of one DPT head (heads._DPT), the shared layer_rn convolutions counted once."""
    layer_dims, feature, last = (96, 192, 384, 768), 256, 128

    def conv(n_in: int, n_out: int, k: int, bias: bool = True) -> int:
        return n_in * n_out * k * k + (n_out if bias else 0)

    scratch = sum(conv(d, feature, 3, bias=False) for d in layer_dims)
    fusion = conv(feature, feature, 1) + 2 * 2 * conv(feature, feature, 3)  # out_conv + 2 residual units
    head = conv(feature, feature // 2, 3) + conv(feature // 2, last, 3) + conv(last, 4, 1)
    resize = conv(layer_dims[0], layer_dims[0], 4) + conv(layer_dims[1], layer_dims[1], 2)
    resize += conv(layer_dims[3], layer_dims[3], 3)
    project = sum(conv(d, ld, 1) for d, ld in zip(dims, layer_dims))
    return scratch + 4 * fusion + head + resize + project


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
    _check_path(source, path)
    if path.is_dir():
        kwargs, state_dict, where = _read_hub_folder(path)
    elif path.is_file() and path.suffix == ".safetensors":
        state_dict = _read_safetensors(path)
        kwargs, where = _infer_constructor(state_dict, given, path), f"checkpoint {path}"
    elif path.is_file():
        kwargs, state_dict, where = _read_torch_file(path, given, tuple(extra_safe_globals))
    elif _HUB_ID.match(str(source)) and path.suffix not in _FILE_SUFFIXES:
        kwargs, state_dict, where = _read_hub_folder(_download(str(source)))
    else:
        raise CheckpointError(f"checkpoint {source}: no such file or folder")
    # each source's own arguments are named by it (those the caller overrides do not matter), then the
    # combination is checked (sizes, divisibility)
    _check_arguments({key: value for key, value in kwargs.items() if key not in given}, where)
    merged = {**kwargs, **given}
    check_constructor(merged, f"{where} with the given constructor" if given else where)
    return merged, state_dict


def _check_path(source: str | os.PathLike[str], path: Path) -> None:
    """Name the path problems that ``is_dir``/``is_file`` hide (they answer False to all of them)."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # how Python < 3.13 reports a loop
        raise CheckpointError(f"checkpoint {source}: symbolic link loop") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"checkpoint {source}: symbolic link loop") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CheckpointError(f"checkpoint {source}: permission denied") from None
        if path.is_symlink():
            raise CheckpointError(
                f"checkpoint {source}: broken symbolic link to {os.readlink(path)}"
            ) from None
        # anything else is a path that does not exist: a hub id, or "no such file" below


def _given_kwargs(constructor: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if constructor is None:
        return {}
    given = parse_constructor(constructor)[1] if isinstance(constructor, str) else dict(constructor)
    _check_arguments(given, "given constructor")
    return given


def read_torch_file(path: Path, extra_safe_globals: Iterable[Any] = ()) -> Any:
    """What a ``.pth``/``.pt`` file holds, read with ``torch.load(weights_only=True)`` on the CPU.

    The file is sniffed first (empty, not a pickle or zip, a zip without ``data.pkl``, a TorchScript
    module, a cut-off download), and only :data:`SAFE_GLOBALS` plus ``extra_safe_globals`` may be
    referenced; every failure is a one-line :class:`CheckpointError` naming ``path``. Other networks'
    loaders (e.g. SEA-RAFT's) read their files through this function too.
    """
    is_zip = _sniff_torch_file(path)
    with contextlib.ExitStack() as stack:
        # a legacy file is a sequence of self-delimiting records, so a cut-off one fails wherever the
        # reading stops (EOFError, IndexError, struct.error, ...); what they share is a read that came
        # back short, which the watch records
        source: Path | _EofWatch = path if is_zip else _EofWatch(stack.enter_context(open(path, "rb")))
        try:
            with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra_safe_globals]):
                # mmap keeps the 2 GB of weights in the page cache instead of a second copy in memory;
                # only the zip format (torch >= 1.6) supports it.
                return torch.load(source, map_location="cpu", weights_only=True, mmap=is_zip)
        except Exception as exc:
            if isinstance(source, _EofWatch) and source.hit_eof:
                raise CheckpointError(
                    f"checkpoint {path} is truncated: the file ends inside its data"
                ) from None
            _raise_load_error(exc, path)


def _read_torch_file(
    path: Path, given: Mapping[str, Any], extra_safe_globals: tuple[Any, ...]
) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """(constructor kwargs, state dict, how messages name the kwargs' origin) of a ``.pth``."""
    state_dict, stored = _unpack(read_torch_file(path, extra_safe_globals), path)
    _refuse_other_architecture(state_dict, path)
    if stored is not None:
        try:
            return parse_constructor(stored)[1], state_dict, f"checkpoint {path}: args.model"
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path}: args.model: {exc}") from None
    return _infer_constructor(state_dict, given, path), state_dict, f"checkpoint {path}"


class _EofWatch:
    """A read-only binary file that records whether a read came back shorter than asked, i.e. whether
    the reader wanted data past the end of the file. No ``fileno``: torch then reads the storages
    through :meth:`readinto` too, instead of from the descriptor behind the watch's back."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.hit_eof = False

    def read(self, size: int | None = -1) -> bytes:
        data = self._file.read(size)
        self.hit_eof |= size is not None and size > 0 and len(data) < size
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._file.readinto(buffer)
        self.hit_eof |= count < memoryview(buffer).nbytes
        return count

    def readline(self, size: int | None = -1) -> bytes:
        line = self._file.readline(size)
        self.hit_eof |= not line.endswith(b"\n") and (size is None or size < 0 or len(line) < size)
        return line

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _raise_load_error(exc: Exception, path: Path) -> NoReturn:
    """The one-line CheckpointError for a failed ``torch.load`` of ``path``."""
    if isinstance(exc, pickle.UnpicklingError):
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
    if isinstance(exc, EOFError):
        raise CheckpointError(f"checkpoint {path} is truncated: the file ends inside its data") from None
    # any other failure to decode an untrusted file is a bad file, not a bug
    raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(exc)}") from None


def _sniff_torch_file(path: Path) -> bool:
    """Refuse files that are not torch checkpoints before torch reports them obscurely; True for zip."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {exc.strerror or _first_line(exc)}"
        ) from None
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
                f"checkpoint {path} is not a state dict: {_show(key)} holds a {type(value).__name__}, "
                "not a tensor"
            )
        if value.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"checkpoint {path}: {_shorten(key, 200)} holds {str(value.dtype).removeprefix('torch.')} values; "
                "weights must be float32, float16, bfloat16 or float64 (the last three are cast to float32 "
                "on load)"
            )


def _read_hub_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """(constructor kwargs, state dict, the config file's name for messages) of a hub folder."""
    config_path, weights_path = folder / HUB_CONFIG, folder / HUB_WEIGHTS
    if not config_path.is_file():
        raise CheckpointError(
            f"checkpoint folder {folder} has no {HUB_CONFIG}: a hub folder holds {HUB_CONFIG} and {HUB_WEIGHTS}"
        )
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint folder {folder} has {HUB_CONFIG} but no {HUB_WEIGHTS}")
    try:
        size = config_path.stat().st_size
        if size > _MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"{config_path} is {size} bytes long; a config.json is at most {_MAX_CONFIG_BYTES}"
            )
        # Python's json reads the non-standard Infinity that the hub's config files use for depth_mode
        config = json.loads(config_path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{config_path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:  # json's parser recurses once per bracket
        raise CheckpointError(f"{config_path} is not a config: its JSON is nested too deeply") from None
    except _RepeatedKey as exc:
        raise CheckpointError(f"{config_path} repeats the key {_show(exc.args[0])}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} cannot be read: {_first_line(exc)}") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4300 digits)
        raise CheckpointError(f"{config_path} is not valid JSON: {_first_line(exc)}") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{config_path} must hold an object of constructor arguments, not {type(config).__name__}"
        )
    # JSON has no tuples; every sequence argument of the constructor (img_size, depth_mode, conf_mode)
    # is a flat tuple in the official constructor string. Only the top level is converted: deeper lists
    # are refused by the argument checks, and converting them would recurse as deep as they nest.
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}
    return kwargs, _read_safetensors(weights_path), str(config_path)


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing repeated keys (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """A CroCo-family safetensors file: another network's is refused from its header, before loading."""
    _refuse_other_architecture(safetensors_shapes(path), path)
    return read_safetensors(path)


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file on the CPU, checked like a ``.pth``'s (:func:`read_state_dict`)."""
    try:
        state_dict = load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError and OSError: the file, not the code, is at fault
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file: {_first_line(exc)}"
        ) from None
    _check_tensors(state_dict, path)
    return state_dict


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of a ``.safetensors`` file, from its header alone (no weights read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # SafetensorError and OSError: the file, not the code, is at fault
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file: {_first_line(exc)}"
        ) from None


def read_state_dict(
    source: str | os.PathLike[str], extra_safe_globals: Iterable[Any] = ()
) -> dict[str, Tensor]:
    """The state dict of a ``.safetensors`` or ``.pth``/``.pt`` file (a bare state dict or the ``model``
    entry of a training checkpoint), read safely, with string keys and floating-point tensors only.

    For other networks' loaders; ``.pth`` tensors are memory-mapped where the file format allows.
    """
    path = Path(source)
    _check_path(source, path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {source}: no such file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return _unpack(read_torch_file(path, extra_safe_globals), path)[0]


# Key prefixes that identify a network family by its state dict alone: (family, prefixes all present)
_FAMILY_KEYS = (
    ("vggt", ("aggregator.", "camera_head.")),
    ("croco", ("enc_blocks.", "dec_blocks.")),
)


def architecture_of(keys: Iterable[str]) -> str:
    """``"vggt"``, ``"croco"`` (DUSt3R, MonST3R) or ``"unknown"``, from state-dict key names alone."""
    names = [key.removeprefix(_DDP_PREFIX) for key in keys]
    for family, prefixes in _FAMILY_KEYS:
        if all(any(name.startswith(prefix) for name in names) for prefix in prefixes):
            return family
    return "unknown"


def _refuse_other_architecture(keys: Iterable[str], path: Path) -> None:
    """A checkpoint of another known network family given where a CroCo-family one is expected."""
    if architecture_of(keys) == "vggt":
        raise ArchitectureError(
            f"checkpoint {path} is a VGGT checkpoint (keys aggregator.*, camera_head.*), not a CroCo-family "
            "(DUSt3R/MonST3R) one; use a VGGT recipe"
        )


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

    ``kwargs`` are checked by :func:`check_constructor`, then keys, dtypes and shapes (after
    :func:`filter_state_dict`), all before any memory is allocated; a problem raises
    :class:`CheckpointError` naming ``source`` and the argument or key (the first missing and first
    unexpected key, or the key whose dtype or shape differs). float16, bfloat16 and float64 weights are
    cast to float32 as they are copied into the network.
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
    # load_checkpoint has checked its output already; this covers callers that pass their own kwargs
    check_constructor(kwargs, where)
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
        if fitted[key].dtype not in FLOAT_DTYPES:  # load_state_dict would copy integers in silently
            raise CheckpointError(
                f"{where}: {key} holds {str(fitted[key].dtype).removeprefix('torch.')} values; weights must "
                "be float32, float16, bfloat16 or float64 (the last three are cast to float32 on load)"
            )
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
    if os.path.lexists(dst):  # lexists: a dangling symbolic link is there too, and rename would fail on it
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
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    except OSError as exc:
        raise CheckpointError(
            f"cannot convert {src}: cannot write {dst}: {exc.strerror or _first_line(exc)}"
        ) from None
    try:
        (tmp / HUB_CONFIG).write_text(config + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / HUB_WEIGHTS), metadata={"format": "pt"})
        tmp.rename(dst)
    except OSError as exc:  # disk full, a folder that appeared meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot convert {src}: cannot write {dst}: {exc.strerror or _first_line(exc)}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
