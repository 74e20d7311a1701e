"""SEA-RAFT weights: the official ``.pth`` files read safely, and seeded random weights for tests.

The official checkpoints (``Tartan-C-T-TSKH-spring540x960-M.pth`` and its siblings) are bare state dicts
saved from the training script's ``model.module``; a copy saved from the DistributedDataParallel wrapper
itself has ``module.`` before every key, which is stripped. The file is read by
:func:`easi3r.backends.checkpoint.read_torch_file` (``torch.load(weights_only=True)``, nothing executed),
and every key, shape and dtype is checked against the network built on the meta device before any memory
is allocated for it. Every problem is a one-line :class:`~easi3r.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from easi3r.backends.checkpoint import FLOAT_DTYPES, filter_state_dict, read_torch_file
from easi3r.backends.sea_raft.network import SeaRaft
from easi3r.backends.sea_raft.presets import PRESETS, SeaRaftConfig
from easi3r.errors import CheckpointError

# batch norm's step counter is the one integer tensor of the network (unused at inference)
_COUNTER = "num_batches_tracked"
# random weights: the flow head's output layer is scaled down so that each step moves the flow by a pixel
# or so, as a trained model's do, and the lookups read the correlation inside the image
_FLOW_OUT = "flow_head.2."
_FLOW_OUT_SCALE = 0.2


def expected_state(config: SeaRaftConfig) -> dict[str, Tensor]:
    """The network's state dict on the meta device: every key with its shape and dtype, no memory."""
    with torch.device("meta"):
        return SeaRaft(config).state_dict()


def load_sea_raft(
    path: str | os.PathLike[str], preset: str, *, device: str | torch.device = "cpu"
) -> SeaRaft:
    """The official checkpoint at ``path`` in a :class:`SeaRaft` of ``preset``'s configuration, in eval mode.

    Float weights of any precision are cast to float32 as they are copied in.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    config = PRESETS[preset].config
    state = read_torch_file(path)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a SEA-RAFT state dict")
    stray = next((key for key in state if not isinstance(key, str)), None)
    if stray is not None:
        raise CheckpointError(f"checkpoint {path} is not a state dict: it has the key {stray!r}")
    expected = expected_state(config)
    fitted = filter_state_dict(state, expected.keys())
    _check_fit(fitted, expected, path, preset)
    with torch.device("meta"):
        model = SeaRaft(config)
    model = model.to_empty(device=device)
    model.load_state_dict(fitted, strict=True)
    return model.eval()


def _check_fit(state: Mapping[str, object], expected: Mapping[str, Tensor], path: Path, preset: str) -> None:
    """Refuse, in one line, a state dict whose keys, shapes or dtypes are not those of ``preset``."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        first = f" (first missing: {missing[0]})" if missing else f" (first unexpected: {unexpected[0][:80]})"
        fits = [name for name in PRESETS if name != preset and _keys_fit(state, name)]
        hint = f"; it fits preset {fits[0]!r}" if fits else ""
        raise CheckpointError(
            f"checkpoint {path} is not a SEA-RAFT {preset!r} checkpoint: {len(missing)} of its "
            f"{len(expected)} keys missing, {len(unexpected)} unexpected{first}{hint}"
        )
    for key, reference in expected.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise CheckpointError(f"checkpoint {path}: {key} holds a {type(value).__name__}, not a tensor")
        counter = key.endswith(_COUNTER)
        if not (_is_integer(value.dtype) if counter else value.dtype in FLOAT_DTYPES):
            wanted = (
                "it must be an integer"
                if counter
                else "weights must be float32, float16, bfloat16 or float64"
            )
            raise CheckpointError(
                f"checkpoint {path}: {key} holds {str(value.dtype).removeprefix('torch.')} values; {wanted}"
            )
        if value.shape != reference.shape:
            raise CheckpointError(
                f"checkpoint {path} is not a SEA-RAFT {preset!r} checkpoint: {key} has shape "
                f"{tuple(value.shape)}, the network {tuple(reference.shape)}"
            )


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _keys_fit(state: Mapping[str, object], preset: str) -> bool:
    expected = expected_state(PRESETS[preset].config)
    return set(filter_state_dict(state, expected.keys())) == set(expected)


def random_state_dict(config: SeaRaftConfig, seed: int) -> dict[str, Tensor]:
    """Seeded random weights for ``config``, identical on every machine and torch version (NumPy's PCG64).

    Scaled so that activations stay of order one through the 20 iterations: convolution and linear
    weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²), norm scales ~ 1 + N(0, 0.1²), running variances in
    [0.5, 1.5], layer scales ~ N(0, 0.3²), the last norm of a residual branch ~ 0.2 (depth does not add
    up), the flow head's output layer 5 times smaller (steps of a pixel or so). Tests and
    benchmarks use them; they compute no real flow.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, Tensor] = {}
    for key, reference in expected_state(config).items():
        shape = tuple(reference.shape)
        if key.endswith(_COUNTER):
            out[key] = torch.zeros((), dtype=reference.dtype)
            continue
        if key.endswith("running_var"):
            values = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("gamma"):
            values = 0.3 * rng.standard_normal(shape)
        elif len(shape) > 1:  # convolution or linear weight: fan-in = everything but the output channels
            values = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif key.endswith(".bn2.weight"):  # a residual branch's last norm: small, so depth does not add up
            values = 0.2 + 0.02 * rng.standard_normal(shape)
        elif key.endswith("weight"):  # batch or layer norm scale
            values = 1 + 0.1 * rng.standard_normal(shape)
        else:  # biases, running means
            values = 0.1 * rng.standard_normal(shape)
        if key.startswith(_FLOW_OUT):
            values *= _FLOW_OUT_SCALE
        out[key] = torch.from_numpy(values.astype(np.float32))
    return out


def random_sea_raft(preset: str, seed: int, *, device: str | torch.device = "cpu") -> SeaRaft:
    """A :class:`SeaRaft` of ``preset`` with :func:`random_state_dict` weights, in eval mode."""
    config = PRESETS[preset].config
    with torch.device("meta"):
        model = SeaRaft(config)
    model = model.to_empty(device=device)
    model.load_state_dict(random_state_dict(config, seed), strict=True)
    return model.eval()
