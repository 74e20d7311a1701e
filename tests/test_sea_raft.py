"""SEA-RAFT (easi3r.backends.sea_raft): official key layout, golden parity with the official code, safe
loading of official files, and the ``sea_raft`` flow model behind the FlowModel contract.

The golden files (tests/data/golden-sea-raft/) hold two images and what the official code computes from
them with :func:`~easi3r.backends.sea_raft.weights.random_state_dict` weights (seed 0), 20 iterations;
``tests/test_sea_raft_upstream.py`` compares live against a checkout and regenerates them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from easi3r.backends.sea_raft import flow as flow_module
from easi3r.backends.sea_raft.flow import SeaRaftFlow
from easi3r.backends.sea_raft.network import FlowOutput, SeaRaft
from easi3r.backends.sea_raft.presets import PRESETS
from easi3r.backends.sea_raft.weights import expected_state, load_sea_raft, random_sea_raft, random_state_dict
from easi3r.contracts import FlowModel
from easi3r.errors import CheckpointError, FrameError, RecipeError
from easi3r.plugins import registry

from .helpers import DATA, relative_error

GOLDEN = DATA / "golden-sea-raft"
KEYS = DATA / "sea-raft-M-keys.json"
ITERS = 20  # the Easi3R reference's flow call
SEED = 0
PARITY_TOL = 1e-4
M_FILE = "Tartan-C-T-TSKH-spring540x960-M.pth"


def load_golden() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "reference.safetensors")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8-valued images → [-1, 1], the pipeline's frames."""
    return images.float() / 127.5 - 1


def our_outputs(model: SeaRaft, image1: torch.Tensor, image2: torch.Tensor, iters: int) -> FlowOutput:
    """Flow and uncertainty at the images' size, padded and cropped as the flow model does it."""
    wrapper = SeaRaftFlow(model, iters=iters)
    left, right, top, bottom = wrapper.padding(*image1.shape[-2:])
    padded = [F.pad(x, (left, right, top, bottom), mode="replicate") for x in (image1, image2)]
    with torch.no_grad():
        out = model(*padded, iters)
    crop = (..., slice(top, top + image1.shape[-2]), slice(left, left + image1.shape[-1]))
    return FlowOutput(out.flow[crop], out.info[crop])


def one_line(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def tiny() -> SeaRaft:
    return random_sea_raft("tiny", SEED)


@pytest.fixture
def tiny_file(tmp_path: Path, tiny: SeaRaft) -> Path:
    """The tiny network's weights saved as the official files are: a bare state dict."""
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    return path


# --- the network ---------------------------------------------------------------------------------


def test_state_dict_is_the_official_layout() -> None:
    """Names, shapes and order of the M network's state dict equal the official RAFT class's."""
    recorded = json.loads(KEYS.read_text())["keys"]
    ours = expected_state(PRESETS["M"].config)
    assert [(key, list(value.shape)) for key, value in ours.items()] == list(recorded.items())


def test_random_weights_are_reproducible() -> None:
    """The golden outputs depend on these exact weights (NumPy's PCG64 stream, not torch's generator)."""
    state = random_state_dict(PRESETS["tiny"].config, SEED)
    assert float(state["cnet.conv1.weight"][0, 0, 0, 0]) == pytest.approx(0.00733274, abs=1e-8)
    assert float(state["update_block.refine.0.gamma"][0]) == pytest.approx(-0.0784227, abs=1e-7)
    assert sum(float(value.double().sum()) for value in state.values()) == pytest.approx(1553.09102, abs=1e-4)
    assert state["cnet.conv1.weight"].dtype == torch.float32
    assert state["cnet.bn1.num_batches_tracked"].dtype == torch.int64


@pytest.mark.parametrize("preset", ["tiny", "M"])
def test_golden_parity_with_upstream(preset: str) -> None:
    """Flow (and, for tiny, the mixture-of-Laplace parameters) as the official code computes them."""
    golden = load_golden()
    out = our_outputs(
        random_sea_raft(preset, SEED), to_unit(golden["image1"]), to_unit(golden["image2"]), ITERS
    )
    assert relative_error(out.flow, golden[f"{preset}/flow"]) < PARITY_TOL
    if preset == "tiny":
        assert relative_error(out.info, golden["tiny/info"]) < PARITY_TOL


def test_network_refuses_unpadded_sizes(tiny: SeaRaft) -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny(torch.zeros(1, 3, 64, 68), torch.zeros(1, 3, 64, 68), 1)


# --- the flow model ------------------------------------------------------------------------------


def test_flow_model_contract(tiny: SeaRaft) -> None:
    """Any size (odd, under the pyramid's minimum), float32 (B, 2, H, W), the reference's padding."""
    model = SeaRaftFlow(tiny, iters=3)
    assert isinstance(model, FlowModel)
    images = torch.rand(3, 3, 45, 70) * 2 - 1
    flow = model(images, images.roll(2, dims=-1))
    assert flow.shape == (3, 2, 45, 70) and flow.dtype == torch.float32 and flow.isfinite().all()
    assert model.padding(45, 70) == (1, 1, 9, 10)  # width to 72 (×8), height to 64 (4 levels); odd pixel last


def test_flow_model_clips_and_chunks(tiny: SeaRaft, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values beyond [-1, 1] are clipped as the reference's rgb() does; chunked batches give the same flow."""
    model = SeaRaftFlow(tiny, iters=2)
    images = torch.rand(3, 3, 64, 72) * 2 - 1
    whole = model(images * 1.5, images.flip(-1))
    assert torch.equal(model((images * 1.5).clamp(-1, 1), images.flip(-1)), whole)
    monkeypatch.setattr(flow_module, "CHUNK_BYTES", 1)  # one pair per chunk
    assert torch.allclose(model(images * 1.5, images.flip(-1)), whole, atol=1e-5)


def test_flow_model_refuses_huge_frames_before_allocating(tiny: SeaRaft) -> None:
    huge = torch.zeros(1, 3, 1, 1).expand(1, 3, 4320, 7680)  # 8K, a view: no memory behind it
    with pytest.raises(FrameError) as excinfo:  # its pyramid would take a terabyte
        SeaRaftFlow(tiny, iters=1)(huge, huge)
    one_line(excinfo, "7680×4320", "frames.size")


def test_flow_model_refuses_mismatched_batches(tiny: SeaRaft) -> None:
    with pytest.raises(ValueError, match="one shape"):
        SeaRaftFlow(tiny, iters=1)(torch.zeros(1, 3, 64, 64), torch.zeros(2, 3, 64, 64))


# --- the registry --------------------------------------------------------------------------------


def create(**params: object) -> object:
    return registry("flow_models").create({"name": "sea_raft", **params}, key="align.flow_model")


def test_registered_with_random_weights(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = create(checkpoint="random", preset="tiny", iters=1, device="cpu", seed=3)
    assert isinstance(model, SeaRaftFlow) and model.iters == 1
    assert "random weights" in caplog.text
    expected = random_state_dict(PRESETS["tiny"].config, 3)["flow_head.2.weight"]
    assert torch.equal(model.model.state_dict()["flow_head.2.weight"], expected)


def test_registered_defaults_are_the_reference(tiny_file: Path) -> None:
    model = create(checkpoint=str(tiny_file), preset="tiny")
    assert model.iters == ITERS and model.device.type in ("cpu", "cuda", "mps")


def test_missing_checkpoint_names_key_and_file() -> None:
    with pytest.raises(RecipeError) as excinfo:
        create()
    one_line(excinfo, "align.flow_model.checkpoint", M_FILE)


def test_checkpoint_that_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        create(checkpoint=str(tmp_path / "nowhere.pth"))
    one_line(excinfo, "nowhere.pth", "align.flow_model.checkpoint", M_FILE)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"preset": "XL"}, "align.flow_model.preset"),
        ({"iters": -1}, "align.flow_model.iters"),
        ({"iters": True}, "align.flow_model.iters"),
        ({"device": "gpu"}, "align.flow_model.device"),
        ({"seed": 1.5}, "align.flow_model.seed"),
        ({"checkpoint": 3}, "align.flow_model.checkpoint"),
        ({"radius": 4}, "align.flow_model.radius"),  # not a parameter: the registry names it
    ],
)
def test_bad_params_are_one_line_recipe_errors(params: dict, key: str) -> None:
    with pytest.raises(RecipeError) as excinfo:
        create(**{"checkpoint": "random", **params})
    one_line(excinfo, key)


# --- loading official files ----------------------------------------------------------------------


def test_loads_official_layout_and_ddp_prefix(tmp_path: Path, tiny: SeaRaft, tiny_file: Path) -> None:
    loaded = load_sea_raft(tiny_file, "tiny")
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    prefixed = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, prefixed)
    assert torch.equal(load_sea_raft(prefixed, "tiny").init_conv.weight, tiny.init_conv.weight)


def test_half_precision_weights_load_as_float32(tmp_path: Path, tiny: SeaRaft) -> None:
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tiny.state_dict().items()}, path)
    assert load_sea_raft(path, "tiny").init_conv.weight.dtype == torch.float32


def test_wrong_preset_says_which_fits(tiny_file: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_sea_raft(tiny_file, "M")
    one_line(excinfo, str(tiny_file), "not a SEA-RAFT 'M' checkpoint", "fits preset 'tiny'")


def bad_state(tiny: SeaRaft, case: str) -> object:
    state = dict(tiny.state_dict())
    if case == "foreign":
        return {"enc_blocks.0.attn.qkv.weight": torch.zeros(3, 3)}
    if case == "shape":
        state["init_conv.weight"] = torch.zeros(1)
    elif case == "int weight":
        state["init_conv.weight"] = state["init_conv.weight"].int()
    elif case == "float counter":
        state["cnet.bn1.num_batches_tracked"] = torch.tensor(1.0)
    elif case == "not a tensor":
        state["init_conv.bias"] = [0.0]
    elif case == "int key":
        state[7] = torch.zeros(1)
    elif case == "list":
        return [1, 2]
    return state


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("foreign", "not a SEA-RAFT 'tiny' checkpoint"),
        ("shape", "init_conv.weight has shape (1,)"),
        ("int weight", "init_conv.weight holds int32"),
        ("float counter", "must be an integer"),
        ("not a tensor", "init_conv.bias holds a list"),
        ("int key", "it has the key 7"),
        ("list", "holds a list, not a SEA-RAFT state dict"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, tiny: SeaRaft, case: str, fragment: str) -> None:
    path = tmp_path / "bad.pth"
    torch.save(bad_state(tiny, case), path)
    with pytest.raises(CheckpointError) as excinfo:
        load_sea_raft(path, "tiny")
    one_line(excinfo, str(path), fragment)


def test_truncated_and_unsafe_files(tmp_path: Path, tiny_file: Path) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(tiny_file.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as excinfo:
        load_sea_raft(cut, "tiny")
    one_line(excinfo, str(cut), "truncated")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": Path("x")}, unsafe)  # a global the safe unpickler refuses: nothing executed
    with pytest.raises(CheckpointError) as excinfo:
        load_sea_raft(unsafe, "tiny")
    one_line(excinfo, str(unsafe), "not an allowed global")
