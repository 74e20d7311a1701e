"""Checkpoint reading, checking and conversion: official .pth, hub folders, hub ids, and bad files."""

from __future__ import annotations

import argparse
import json
import math
import pickle
import shutil
import sys
import types
import zipfile
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from easi3r.backends.checkpoint import (
    build_model,
    convert_to_hub_folder,
    filter_state_dict,
    load_checkpoint,
    load_model,
    parse_constructor,
)
from easi3r.backends.croco import CroCoStereo
from easi3r.cli import main
from easi3r.errors import CheckpointError

from .helpers import DATA, FRAMES, GOLDEN_NET

GOLDEN_PTH = GOLDEN_NET / "weights.pth"
GOLDEN_KWARGS = dict(
    pos_embed="RoPE100", patch_embed_cls="ManyAR_PatchEmbed", img_size=(512, 512), head_type="linear",
    output_mode="pts3d", depth_mode=("exp", -math.inf, math.inf), conf_mode=("exp", 1, math.inf),
    enc_embed_dim=128, enc_depth=3, enc_num_heads=2, dec_embed_dim=96, dec_depth=3, dec_num_heads=3,
)  # fmt: skip
MODES = "output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf)"
VITL = "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12"
DUST3R_512_DPT = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    f"head_type='dpt', {MODES}, {VITL})"
)
DUST3R_512_LINEAR = DUST3R_512_DPT.replace("'dpt'", "'linear'")
DUST3R_224_LINEAR = (
    f"AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(224, 224), head_type='linear', {MODES}, {VITL})"
)
MONST3R = DUST3R_512_DPT[:-1] + ", freeze='encoder')"
# smallest network with a DPT head (it needs more than 9 decoder layers), for the aliased convolutions
TINY_DPT = dict(
    head_type="dpt",
    enc_embed_dim=64,
    enc_depth=2,
    enc_num_heads=2,
    dec_embed_dim=48,
    dec_depth=12,
    dec_num_heads=3,
)


class Marker:
    """A class torch's safe loader does not know, for the allow-list tests."""


@cache
def golden() -> tuple[argparse.Namespace, dict[str, torch.Tensor]]:
    """The golden checkpoint's contents, read directly (callers must not modify them)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(GOLDEN_PTH, map_location="cpu", weights_only=True)
    return ckpt["args"], ckpt["model"]


def assert_one_line(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.fixture(scope="module")
def tiny_dpt_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-layout .pth of the tiny DPT network (state_dict() holds both alias names)."""
    model = CroCoStereo(**TINY_DPT)
    args = argparse.Namespace(
        model="AsymmetricCroCo3DStereo(" + ", ".join(f"{k}={v!r}" for k, v in TINY_DPT.items()) + ")"
    )
    path = tmp_path_factory.mktemp("dpt") / "tiny_dpt.pth"
    torch.save({"args": args, "model": model.state_dict()}, path)
    return path


# --- the golden checkpoint and the network's key layout ---------------------------------------------


def test_golden_checkpoint_loads_strictly() -> None:
    kwargs, state_dict = load_checkpoint(GOLDEN_PTH)
    assert kwargs == GOLDEN_KWARGS
    assert type(kwargs["depth_mode"]) is tuple and type(kwargs["img_size"]) is tuple
    model, loaded_kwargs = load_model(GOLDEN_PTH)
    assert loaded_kwargs == GOLDEN_KWARGS
    assert not model.training
    assert_same_tensors(model.state_dict(), golden()[1])
    assert_same_tensors(state_dict, golden()[1])


def test_vitl_512_dpt_has_exactly_the_official_keys_and_shapes() -> None:
    lines = (DATA / "dust3r_vitl_512_dpt.tsv").read_text().splitlines()
    official = {}
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        official[key] = (tuple(int(n) for n in shape.split("x")), dtype)
    with torch.device("meta"):
        model = CroCoStereo(**parse_constructor(DUST3R_512_DPT)[1])
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert len(official) == 1009
    assert sorted(official.keys() - ours.keys()) == [], "missing from CroCoStereo"
    assert sorted(ours.keys() - official.keys()) == [], "not in the official checkpoint"
    assert {k: v for k, v in ours.items() if official[k] != v} == {}


# --- the constructor parser -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [DUST3R_512_DPT, DUST3R_512_LINEAR, DUST3R_224_LINEAR, MONST3R],
    ids=["dust3r_512_dpt", "dust3r_512_linear", "dust3r_224_linear", "monst3r"],
)
def test_parser_accepts_the_official_constructors(text: str) -> None:
    name, kwargs = parse_constructor(text)
    assert name == "AsymmetricCroCo3DStereo"
    assert kwargs["depth_mode"] == ("exp", -math.inf, math.inf)
    assert kwargs["conf_mode"] == ("exp", 1, math.inf)
    assert kwargs["enc_embed_dim"] == 1024 and kwargs["dec_num_heads"] == 12
    with torch.device("meta"):
        CroCoStereo(**kwargs)  # every official argument, freeze included, is accepted


def test_parser_literals() -> None:
    _, kwargs = parse_constructor(
        "AsymmetricCroCo3DStereo(a=-1, b=+2.5, c=[1, (None, True)], d=-inf, e=nan, f='x', g=1e-3)"
    )
    assert kwargs["a"] == -1 and kwargs["b"] == 2.5 and kwargs["c"] == [1, (None, True)]
    assert kwargs["d"] == -math.inf and math.isnan(kwargs["e"]) and kwargs["f"] == "x" and kwargs["g"] == 1e-3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os').system('x')", "__import__('os').system"),
        ("AsymmetricCroCo3DStereo(a=os.system)", "os.system"),
        ("AsymmetricCroCo3DStereo(a=os)", "'os'"),
        ("AsymmetricCroCo3DStereo(**x)", "**x"),
        ("AsymmetricCroCo3DStereo(x)", "positional"),
        ("Evil()", "'Evil'"),
        ("AsymmetricCroCo3DStereo(a=lambda: 1)", "Lambda"),
        ("AsymmetricCroCo3DStereo(a=f'{x}')", "JoinedStr"),
        ("AsymmetricCroCo3DStereo(a=x[0])", "Subscript"),
        ("AsymmetricCroCo3DStereo(a=open('f'))", "open('f')"),
        ("AsymmetricCroCo3DStereo(a=-'s')", "UnaryOp"),
        ("AsymmetricCroCo3DStereo(a={1: 2})", "Dict"),
        ("torch.nn.Module(a=1)", "torch.nn.Module"),
        ("AsymmetricCroCo3DStereo", "must be a call"),
        ("AsymmetricCroCo3DStereo(a=1", "does not parse"),
        ("AsymmetricCroCo3DStereo(a=1, a=2)", "repeat"),
    ],
)
def test_parser_rejects_code(text: str, fragment: str) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        parse_constructor(text)
    assert_one_line(excinfo, fragment)


def test_bad_constructor_string_in_a_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "evil_args.pth"
    torch.save(
        {"args": argparse.Namespace(model="AsymmetricCroCo3DStereo(a=os.system)"), "model": golden()[1]}, path
    )
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert_one_line(excinfo, str(path), "args.model", "os.system")


# --- unpickling safety ------------------------------------------------------------------------------


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    created = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return open, (str(created), "w")

    path = tmp_path / "evil.pth"
    torch.save({"args": argparse.Namespace(model="x"), "model": {"w": Payload()}}, path)
    assert not created.exists()
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert_one_line(excinfo, str(path), "io.open", "nothing was executed")
    assert not created.exists()


def test_unknown_class_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    args, state_dict = golden()
    torch.save({"args": args, "model": state_dict, "extra": Marker()}, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert_one_line(excinfo, str(path), f"{Marker.__module__}.Marker", "extra_safe_globals")
    kwargs, _ = load_checkpoint(path, extra_safe_globals=[Marker])
    assert kwargs == GOLDEN_KWARGS


# --- hub folders and conversion ---------------------------------------------------------------------


def test_convert_golden_round_trip(tmp_path: Path) -> None:
    hub = convert_to_hub_folder(GOLDEN_PTH, tmp_path / "hub")
    assert sorted(p.name for p in hub.iterdir()) == ["config.json", "model.safetensors"]
    assert "Infinity" in (hub / "config.json").read_text()
    kwargs, state_dict = load_checkpoint(hub)
    assert kwargs == GOLDEN_KWARGS
    assert_same_tensors(state_dict, golden()[1])
    model, _ = load_model(hub)
    assert_same_tensors(model.state_dict(), golden()[1])
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]  # no temporary folder left behind
    with pytest.raises(CheckpointError) as excinfo:
        convert_to_hub_folder(GOLDEN_PTH, hub)
    assert_one_line(excinfo, "already exists")


def test_convert_dpt_drops_and_restores_the_aliased_convolutions(tiny_dpt_pth: Path, tmp_path: Path) -> None:
    kwargs, original = load_checkpoint(tiny_dpt_pth)
    assert kwargs == TINY_DPT
    hub = convert_to_hub_folder(tiny_dpt_pth, tmp_path / "hub")
    stored = load_file(hub / "model.safetensors")
    assert "downstream_head1.dpt.scratch.layer1_rn.weight" in stored
    assert not any(".scratch.layer_rn." in key for key in stored)
    assert original.keys() - stored.keys() == {
        f"downstream_head{h}.dpt.scratch.layer_rn.{i}.weight" for h in (1, 2) for i in range(4)
    }
    model, hub_kwargs = load_model(hub)
    assert hub_kwargs == TINY_DPT
    assert_same_tensors(model.state_dict(), original)
    head = model.downstream_head2.dpt.scratch
    assert head.layer_rn[2].weight is head.layer3_rn.weight


def test_hub_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path)
    assert_one_line(excinfo, str(tmp_path), "no config.json")
    (tmp_path / "config.json").write_text(json.dumps(GOLDEN_KWARGS))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path)
    assert_one_line(excinfo, str(tmp_path), "no model.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"enc_depth": 3,')
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path)
    assert_one_line(excinfo, str(tmp_path / "config.json"), "not valid JSON", "line 1")
    (tmp_path / "config.json").write_text(json.dumps({**GOLDEN_KWARGS, "colour": "red"}))
    with pytest.raises(CheckpointError) as excinfo:
        load_model(tmp_path)
    assert_one_line(excinfo, str(tmp_path), "cannot build", "colour")


def test_hub_id_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint("naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt")
    assert_one_line(excinfo, "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt", "pip install easi3r[hub]")


def test_hub_id_downloads_a_hub_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hub = convert_to_hub_folder(GOLDEN_PTH, tmp_path / "snapshot")
    requests = []

    def snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        requests.append((repo_id, sorted(allow_patterns)))
        return str(hub)

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    kwargs, _ = load_checkpoint("someone/tiny_model")
    assert kwargs == GOLDEN_KWARGS
    assert requests == [("someone/tiny_model", ["config.json", "model.safetensors"])]


# --- key fix-ups and bare state dicts ---------------------------------------------------------------


def test_filter_state_dict_fix_ups() -> None:
    w = torch.zeros(1)
    model_keys = [
        "dec_blocks.0.w", "dec_blocks2.0.w",
        "head.dpt.scratch.layer1_rn.weight", "head.dpt.scratch.layer_rn.0.weight",
        "head.dpt.scratch.layer2_rn.weight", "head.dpt.scratch.layer_rn.1.weight",
    ]  # fmt: skip
    state_dict = {
        "module.dec_blocks.0.w": w,
        "head.dpt.scratch.layer1_rn.weight": w,
        "head.dpt.scratch.layer_rn.1.weight": w,
        "module.unknown": w,
    }
    assert set(filter_state_dict(state_dict, model_keys)) == {*model_keys, "module.unknown"}
    assert "module.dec_blocks.0.w" in state_dict  # the input is left alone


def test_missing_second_decoder_is_copied_from_the_first() -> None:
    _, state_dict = golden()
    one_decoder = {k: v for k, v in state_dict.items() if not k.startswith("dec_blocks2.")}
    model = build_model(GOLDEN_KWARGS, one_decoder)
    for (name1, p1), (name2, p2) in zip(
        model.dec_blocks.named_parameters(), model.dec_blocks2.named_parameters()
    ):
        assert name1 == name2 and torch.equal(p1, p2)


def test_one_decoder_checkpoint_converts_with_both_decoders(tmp_path: Path) -> None:
    args, state_dict = golden()
    path = tmp_path / "one_decoder.pth"
    torch.save(
        {"args": args, "model": {k: v for k, v in state_dict.items() if "dec_blocks2." not in k}}, path
    )
    hub = convert_to_hub_folder(path, tmp_path / "hub")  # safetensors refuses the shared copies unless split
    stored = load_file(hub / "model.safetensors")
    assert torch.equal(stored["dec_blocks2.1.attn.qkv.weight"], state_dict["dec_blocks.1.attn.qkv.weight"])


def test_ddp_prefix_is_stripped(tmp_path: Path) -> None:
    args, state_dict = golden()
    path = tmp_path / "ddp.pth"
    torch.save({"args": args, "model": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    model, _ = load_model(path)
    assert_same_tensors(model.state_dict(), state_dict)


@pytest.mark.parametrize("zip_format", [True, False])
def test_bare_state_dict_architecture_is_inferred(tmp_path: Path, zip_format: bool) -> None:
    _, state_dict = golden()
    path = tmp_path / "bare.pth"
    torch.save(state_dict, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert_one_line(excinfo, str(path), "width 128", "enc_num_heads")
    kwargs, _ = load_checkpoint(path, constructor={"enc_num_heads": 2, "dec_num_heads": 3})
    assert {k: kwargs[k] for k in ("enc_embed_dim", "enc_depth", "dec_embed_dim", "dec_depth", "head_type")} == {
        "enc_embed_dim": 128, "enc_depth": 3, "dec_embed_dim": 96, "dec_depth": 3, "head_type": "linear"
    }  # fmt: skip
    model = build_model(kwargs, state_dict)
    assert_same_tensors(model.state_dict(), state_dict)


def test_dpt_architecture_is_inferred_from_safetensors(tiny_dpt_pth: Path, tmp_path: Path) -> None:
    hub = convert_to_hub_folder(tiny_dpt_pth, tmp_path / "hub")
    kwargs, state_dict = load_checkpoint(
        hub / "model.safetensors", constructor={"enc_num_heads": 2, "dec_num_heads": 3}
    )
    assert kwargs["head_type"] == "dpt" and kwargs["dec_depth"] == 12
    build_model(kwargs, state_dict)


# --- files that are not (whole) checkpoints ---------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint("does/not/exist.pth")
    assert_one_line(excinfo, "does/not/exist.pth", "no such file")


# The whole message is compared: pytest's tmp_path of these tests contains the word "truncated", so a
# fragment check would pass even if the file were reported as something else.
TRUNCATED_ZIP = "checkpoint {} is truncated or corrupt: its zip directory is missing"
TRUNCATED_LEGACY = "checkpoint {} is truncated: the file ends inside its data"


def cut_checkpoint(path: Path, zip_format: bool = True) -> Path:
    """A checkpoint cut off in the middle, as an interrupted download leaves it."""
    if zip_format:
        data = GOLDEN_PTH.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save(golden()[1], path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:500])
    return path


def test_truncated_file(tmp_path: Path) -> None:
    path = cut_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert str(excinfo.value) == TRUNCATED_ZIP.format(path)
    legacy = cut_checkpoint(tmp_path / "legacy.pth", zip_format=False)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(legacy)
    assert str(excinfo.value) == TRUNCATED_LEGACY.format(legacy)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("command", ["run", "convert"])
def test_truncated_file_through_the_cli(
    command: str, zip_format: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cut_checkpoint(tmp_path / "cut.pth", zip_format)
    out = tmp_path / "out"
    if command == "run":
        frames = tmp_path / "frames"
        frames.mkdir()
        for name in ("00000.jpg", "00001.jpg"):
            shutil.copy(FRAMES / name, frames / name)
        argv = ["run", str(frames), "-r", "tiny", "-o", str(out), "--checkpoint", str(path)]
    else:
        argv = ["convert", str(path), str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    expected = (TRUNCATED_ZIP if zip_format else TRUNCATED_LEGACY).format(path)
    assert (code, err) == (2, f"easi3r: error: {expected}\n")
    assert not out.exists()


# torch warns about the protocol of a plain pickle before refusing it
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"weights, honestly\n", "not a PyTorch checkpoint"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(64), "not a PyTorch checkpoint"),
        (b"", "empty"),
        ("zip", "zip archive but not a PyTorch checkpoint"),
        ("pickle", "not a PyTorch checkpoint"),
        ("list", "holds a list"),
        ("strings", "not a state dict"),
        ("torchscript", "TorchScript module"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes | str, fragment: str) -> None:
    path = tmp_path / "file.pth"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    elif content == "strings":
        torch.save({"model": {"w": "not a tensor"}}, path)
    elif content == "torchscript":  # the layout torch.jit.save writes (torch.jit itself is deprecated)
        with zipfile.ZipFile(path, "w") as archive:
            for name in ("data.pkl", "constants.pkl", "code/__torch__.py"):
                archive.writestr(f"archive/{name}", "")
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert_one_line(excinfo, str(path), fragment)


# --- architecture mismatches ------------------------------------------------------------------------


def test_wrong_architecture_names_the_first_missing_and_unexpected_key() -> None:
    _, state_dict = golden()
    partial = {k: v for k, v in state_dict.items() if not k.startswith("enc_blocks.2.")}
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as excinfo:
        build_model(GOLDEN_KWARGS, partial, source="mine.pth")
    assert_one_line(
        excinfo,
        "checkpoint mine.pth does not fit AsymmetricCroCo3DStereo(head_type='linear', enc_embed_dim=128",
        "12 missing keys (first: enc_blocks.2.norm1.weight)",
        "1 unexpected (first: extra.weight)",
    )
    with pytest.raises(CheckpointError) as excinfo:
        build_model({**GOLDEN_KWARGS, "enc_depth": 4}, state_dict, source="mine.pth")
    assert_one_line(
        excinfo, "enc_depth=4", "12 missing keys (first: enc_blocks.3.norm1.weight), 0 unexpected"
    )


def test_wrong_width_names_the_key_and_both_shapes() -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_model(GOLDEN_PTH, constructor={"dec_embed_dim": 48})
    assert_one_line(
        excinfo, str(GOLDEN_PTH), "mask_token has shape 1x1x96 in the checkpoint, 1x1x48 in the network"
    )
