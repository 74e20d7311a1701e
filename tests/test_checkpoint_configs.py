"""Architecture configs from checkpoints are checked before anything is built (issue 9, hardening).

Every case goes through both entry points a user has, ``easi3r run --checkpoint`` (:func:`load_model`)
and ``easi3r convert`` (:func:`convert_to_hub_folder`), from a hub folder's ``config.json`` and from a
``.pth``'s ``args.model`` string, and must give one line naming the file and the key. None of them may
build a network: a size check that came after the build would hang on ``enc_depth=1000000000``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from easi3r.backends.checkpoint import (
    CONSTRUCTOR_DEFAULTS,
    MAX_PARAMETERS,
    build_model,
    check_constructor,
    convert_to_hub_folder,
    estimate_parameters,
    load_checkpoint,
    load_model,
)
from easi3r.backends.croco import CroCoStereo
from easi3r.backends.presets import PRESETS
from easi3r.cli import main
from easi3r.errors import CheckpointError

from .helpers import FRAMES, GOLDEN_NET

GOLDEN_PTH = GOLDEN_NET / "weights.pth"
GOLDEN_MODEL = json.loads((GOLDEN_NET / "info.json").read_text())["model"]
# the golden constructor as a hub config.json holds it (JSON lists, Infinity)
GOLDEN_CONFIG: dict[str, Any] = dict(
    pos_embed="RoPE100", patch_embed_cls="ManyAR_PatchEmbed", img_size=[512, 512], head_type="linear",
    output_mode="pts3d", depth_mode=["exp", -math.inf, math.inf], conf_mode=["exp", 1, math.inf],
    enc_embed_dim=128, enc_depth=3, enc_num_heads=2, dec_embed_dim=96, dec_depth=3, dec_num_heads=3,
)  # fmt: skip


@cache
def golden_weights() -> dict[str, torch.Tensor]:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(GOLDEN_PTH, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def golden_safetensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file(golden_weights(), path)
    return path


def write_hub(folder: Path, weights: Path, config: dict[str, Any] | str) -> Path:
    folder.mkdir()
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    (folder / "model.safetensors").symlink_to(weights)  # the weights are not what these tests vary
    return folder


def write_pth(path: Path, model: str, weights: dict[str, torch.Tensor] | None = None) -> Path:
    torch.save({"args": argparse.Namespace(model=model), "model": weights or golden_weights()}, path)
    return path


def constructor_string(config: dict[str, Any]) -> str:
    def literal(value: Any) -> str:
        return repr(tuple(value)) if isinstance(value, list) else repr(value)

    return "AsymmetricCroCo3DStereo(" + ", ".join(f"{k}={literal(v)}" for k, v in config.items()) + ")"


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one stderr line of a CLI call that must fail with exit status 2."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("easi3r: error: "), lines[0]
    return lines[0]


def assert_one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# (config changes, fragments the message must contain besides the file name)
BAD_CONFIGS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "huge_depth": (
        {"enc_depth": 1_000_000_000},
        (
            "would have about 2e+14 parameters (793 TB in float32); at most 4e+09 (16 GB) are allowed",
            "enc_depth=1000000000",
        ),
    ),
    "zero_heads": ({"enc_num_heads": 0}, ("enc_num_heads must be a positive integer, got 0",)),
    "negative_width": ({"enc_embed_dim": -128}, ("enc_embed_dim must be a positive integer, got -128",)),
    "indivisible_width": ({"dec_embed_dim": 100}, ("dec_embed_dim=100 is not divisible by dec_num_heads=3",)),
    "odd_head_width": ({"enc_embed_dim": 36, "enc_num_heads": 2}, ("18 channels", "multiple of 4")),
    "bool_depth": ({"dec_depth": True}, ("dec_depth must be a positive integer, got True",)),
    "float_depth": ({"dec_depth": 3.0}, ("dec_depth must be a positive integer, got 3.0",)),
    "deep_thin": (
        {"enc_embed_dim": 4, "enc_num_heads": 1, "enc_depth": 100_000},
        ("enc_depth=100000 is more than 256",),
    ),
    "rope0": ({"pos_embed": "RoPE0"}, ("pos_embed must be 'RoPE<base>' with a positive base", "'RoPE0'")),
    "cosine": ({"pos_embed": "cosine"}, ("pos_embed", "'cosine'")),
    "rope_nan": ({"pos_embed": "RoPEnan"}, ("pos_embed", "'RoPEnan'")),
    "img_size_str": ({"img_size": "abc"}, ("img_size must be", "got 'abc'")),
    "img_size_huge": ({"img_size": [1e6, 1e6]}, ("img_size must be", "(1000000.0, 1000000.0)")),
    "img_size_big_int": ({"img_size": [512, 1_000_000]}, ("img_size must be", "at most 4096")),
    "img_size_three": ({"img_size": [512, 512, 3]}, ("img_size must be",)),
    "img_size_patch": ({"img_size": [512, 500]}, ("img_size (512, 500) is not a multiple of patch_size=16",)),
    "patch_zero": ({"patch_size": 0}, ("patch_size must be a positive integer, got 0",)),
    "head_type": ({"head_type": "conv"}, ("head_type must be one of 'dpt', 'linear', got 'conv'",)),
    "dpt_shallow": ({"head_type": "dpt"}, ("head_type='dpt' needs dec_depth > 9, got 3",)),
    "output_mode": ({"output_mode": "pts3d+desc24"}, ("output_mode must be 'pts3d'",)),
    "patch_embed": ({"patch_embed_cls": "os.system"}, ("patch_embed_cls must be one of", "'os.system'")),
    "depth_mode": ({"depth_mode": ["exp", 0, math.inf]}, ("depth_mode must be", "('exp', 0, inf)")),
    "depth_mode_name": ({"depth_mode": ["cube", -math.inf, math.inf]}, ("depth_mode must be",)),
    "conf_mode": ({"conf_mode": ["exp", math.inf, 1]}, ("conf_mode must be", "('exp', inf, 1)")),
    "conf_mode_short": ({"conf_mode": ["exp"]}, ("conf_mode must be",)),
    "mlp_ratio": ({"mlp_ratio": -4}, ("mlp_ratio must be a positive number, got -4",)),
    "mlp_ratio_nan": ({"mlp_ratio": math.nan}, ("mlp_ratio must be a positive number, got nan",)),
    "norm_flag": ({"norm_im2_in_dec": "yes"}, ("norm_im2_in_dec must be true or false, got 'yes'",)),
    "unknown": ({"colour": "red"}, ("cannot build AsymmetricCroCo3DStereo: unknown argument 'colour'",)),
    "long_value": ({"head_type": "x" * 100_000}, ("head_type must be one of",)),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_json(case: str, tmp_path: Path, golden_safetensors: Path) -> None:
    changes, fragments = BAD_CONFIGS[case]
    hub = write_hub(tmp_path / "hub", golden_safetensors, {**GOLDEN_CONFIG, **changes})
    with pytest.raises(CheckpointError) as excinfo:
        load_model(hub)
    message = str(excinfo.value)
    assert_one_line(message, str(hub / "config.json"), *fragments)
    assert len(message) < 400, message
    with pytest.raises(CheckpointError) as excinfo:
        convert_to_hub_folder(hub, tmp_path / "converted")
    assert str(excinfo.value) == message
    assert not (tmp_path / "converted").exists()


@pytest.mark.parametrize("case", [case for case in BAD_CONFIGS if case != "long_value"])
def test_bad_constructor_string(case: str, tmp_path: Path) -> None:
    changes, fragments = BAD_CONFIGS[case]
    path = write_pth(tmp_path / "model.pth", constructor_string({**GOLDEN_CONFIG, **changes}))
    with pytest.raises(CheckpointError) as excinfo:
        load_model(path)
    message = str(excinfo.value)
    assert_one_line(message, f"checkpoint {path}: args.model: ", *fragments)
    with pytest.raises(CheckpointError) as excinfo:
        convert_to_hub_folder(path, tmp_path / "converted")
    assert str(excinfo.value) == message


@pytest.mark.parametrize("case", ["huge_depth", "zero_heads", "negative_width", "rope0", "img_size_str"])
def test_bad_configs_through_the_cli(
    case: str, tmp_path: Path, golden_safetensors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, fragments = BAD_CONFIGS[case]
    hub = write_hub(tmp_path / "hub", golden_safetensors, {**GOLDEN_CONFIG, **changes})
    pth = write_pth(tmp_path / "model.pth", constructor_string({**GOLDEN_CONFIG, **changes}))
    frames, out = tmp_path / "frames", tmp_path / "out"
    frames.mkdir()
    for name in ("00000.jpg", "00001.jpg"):
        shutil.copy(FRAMES / name, frames / name)
    for checkpoint, name in ((hub, str(hub / "config.json")), (pth, f"{pth}: args.model")):
        line = cli_error(capsys, "convert", str(checkpoint), str(tmp_path / "converted"))
        assert_one_line(line, name, *fragments)
        line = cli_error(
            capsys, "run", str(frames), "-r", "tiny", "-o", str(out), "--checkpoint", str(checkpoint)
        )
        assert_one_line(line, name, *fragments)
        assert not out.exists() and not (tmp_path / "converted").exists()


def test_overrides_are_checked_and_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(GOLDEN_PTH, constructor={"enc_num_heads": 0})
    assert_one_line(str(excinfo.value), "given constructor: enc_num_heads must be a positive integer, got 0")
    with pytest.raises(CheckpointError) as excinfo:
        build_model({**dict(GOLDEN_CONFIG), "enc_num_heads": 0}, golden_weights(), source="mine.pth")
    assert_one_line(str(excinfo.value), "checkpoint mine.pth: enc_num_heads must be a positive integer")


def test_an_override_replaces_a_bad_stored_value(tmp_path: Path, golden_safetensors: Path) -> None:
    hub = write_hub(tmp_path / "hub", golden_safetensors, {**GOLDEN_CONFIG, "enc_num_heads": 0})
    with pytest.raises(CheckpointError):
        load_checkpoint(hub)
    kwargs, _ = load_checkpoint(hub, constructor={"enc_num_heads": 2})
    assert kwargs["enc_num_heads"] == 2
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(hub, constructor={"enc_num_heads": 5})
    assert_one_line(
        str(excinfo.value),
        f"{hub / 'config.json'} with the given constructor: enc_embed_dim=128 is not divisible by enc_num_heads=5",
    )


def test_inferred_depth_is_checked(tmp_path: Path) -> None:
    """A bare state dict's depth comes from its key names; a key ``enc_blocks.999999999.*`` is refused."""
    weights = dict(golden_weights())
    weights["enc_blocks.999999999.norm1.weight"] = weights["enc_blocks.0.norm1.weight"]
    path = tmp_path / "bare.pth"
    torch.save(weights, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, constructor={"enc_num_heads": 2, "dec_num_heads": 3})
    assert_one_line(
        str(excinfo.value),
        f"checkpoint {path} with the given constructor: ",
        "parameters",
        "enc_depth=1000000000",
    )


# --- config.json files that are not configs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 100_000, "nested too deeply"),
        ("[" * 500 + "]" * 500, "must hold an object of constructor arguments, not list"),
        ('{"img_size": ' + "[" * 500 + "]" * 500 + "}", "img_size must be"),
        ('{"enc_depth": 1' + "0" * 5000 + "}", "is not valid JSON"),
        ('{"enc_depth": 3, "enc_depth": 4}', "repeats the key 'enc_depth'"),
        ("\udcff", "cannot be read"),
    ],
    ids=["brackets", "nested_list", "nested_value", "long_int", "duplicate", "not_utf8"],
)
def test_config_json_that_is_not_a_config(
    text: str, fragment: str, tmp_path: Path, golden_safetensors: Path
) -> None:
    hub = tmp_path / "hub"
    if text == "\udcff":
        write_hub(hub, golden_safetensors, "{}")
        (hub / "config.json").write_bytes(b'{"head_type": "\xff"}')
    else:
        write_hub(hub, golden_safetensors, text)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(hub)
    assert_one_line(str(excinfo.value), str(hub / "config.json"), fragment)


def test_oversized_config_json(tmp_path: Path, golden_safetensors: Path) -> None:
    hub = write_hub(tmp_path / "hub", golden_safetensors, "{}")
    with open(hub / "config.json", "w") as f:
        f.write('{"freeze": "' + "x" * 2_000_000 + '"}')
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(hub)
    assert_one_line(str(excinfo.value), str(hub / "config.json"), "2000014 bytes", "at most 1000000")


# --- weights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8, torch.complex64])
def test_non_float_weights_are_refused(
    dtype: torch.dtype, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = dict(golden_weights())
    key = "enc_blocks.1.attn.qkv.weight"
    weights[key] = weights[key].to(dtype)
    pth = write_pth(tmp_path / "ints.pth", GOLDEN_MODEL, weights)
    hub = tmp_path / "hub"
    write_hub(hub, tmp_path / "ints.safetensors", dict(GOLDEN_CONFIG))
    save_file(weights, tmp_path / "ints.safetensors")
    name = str(dtype).removeprefix("torch.")
    for path, shown in ((pth, str(pth)), (hub, str(hub / "model.safetensors"))):
        expected = (
            f"{shown}: {key} holds {name} values; weights must be float32, float16, bfloat16 or float64"
        )
        with pytest.raises(CheckpointError) as excinfo:
            load_model(path)
        assert_one_line(str(excinfo.value), expected)
        line = cli_error(capsys, "convert", str(path), str(tmp_path / "converted"))
        assert_one_line(line, expected)
        assert not (tmp_path / "converted").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_weights_are_cast_to_float32_on_load_and_kept_by_convert(
    dtype: torch.dtype, tmp_path: Path
) -> None:
    weights = {key: value.to(dtype) for key, value in golden_weights().items()}
    pth = write_pth(tmp_path / "half.pth", GOLDEN_MODEL, weights)
    model, _ = load_model(pth)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, weights[key].float()), key
    hub = convert_to_hub_folder(pth, tmp_path / "hub")
    _, stored = load_checkpoint(hub)
    assert {value.dtype for value in stored.values()} == {dtype}


# --- paths ------------------------------------------------------------------------------------------


def test_symlink_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    os.symlink("loop", "loop")
    os.mkdir("dir")
    os.symlink("loop", "dir/loop")  # relative and hub-id-like: "dir/loop" must not be taken for one
    for source in ("loop", "dir/loop", str(tmp_path / "loop"), "loop/weights.pth"):
        with pytest.raises(CheckpointError) as excinfo:
            load_checkpoint(source)
        assert_one_line(str(excinfo.value), f"checkpoint {source}: symbolic link loop")
        line = cli_error(capsys, "convert", source, "converted")
        assert_one_line(line, f"checkpoint {source}: symbolic link loop")
        assert "huggingface" not in line and "hub" not in line
    with pytest.raises(CheckpointError) as excinfo:
        load_model("dir/loop")
    assert_one_line(str(excinfo.value), "checkpoint dir/loop: symbolic link loop")


def test_dangling_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    os.mkdir("dir")
    os.symlink("gone.pth", "dir/model")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint("dir/model")
    assert_one_line(str(excinfo.value), "checkpoint dir/model: broken symbolic link to gone.pth")


def test_convert_to_a_dangling_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dst").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError) as excinfo:
        convert_to_hub_folder(GOLDEN_PTH, tmp_path / "dst")
    assert_one_line(str(excinfo.value), f"{tmp_path / 'dst'} already exists")


# --- the checks themselves --------------------------------------------------------------------------


def test_defaults_match_the_network() -> None:
    signature = inspect.signature(CroCoStereo.__init__).parameters
    assert {name: p.default for name, p in signature.items() if name != "self"} == CONSTRUCTOR_DEFAULTS


@pytest.mark.parametrize("preset", PRESETS)
def test_estimate_is_exact(preset: str) -> None:
    """The arithmetic estimate equals the parameter count of the built network (on the meta device)."""
    kwargs = PRESETS[preset].constructor
    check_constructor(kwargs)
    with torch.device("meta"):
        model = CroCoStereo(**kwargs)
    assert estimate_parameters(kwargs) == sum(p.numel() for p in model.parameters())


def test_estimate_of_variants() -> None:
    for changes in ({"patch_size": 8, "mlp_ratio": 2.5}, {"norm_im2_in_dec": False}, {"img_size": 256}):
        kwargs = {**PRESETS["tiny"].constructor, **changes}
        check_constructor(kwargs)
        with torch.device("meta"):
            model = CroCoStereo(**kwargs)
        assert estimate_parameters(kwargs) == sum(p.numel() for p in model.parameters())


def test_official_size_is_far_below_the_limit() -> None:
    assert 5.5e8 < estimate_parameters(PRESETS["vitl_512_dpt"].constructor) < MAX_PARAMETERS / 4
