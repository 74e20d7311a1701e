"""Generated bad input through the command line: whatever the recipe overrides or formula, easi3r exits with
0 or 2, prints at most one line on standard error (``easi3r: error: …``) and no traceback, leaves no
output folder behind and answers quickly."""

from __future__ import annotations

import contextlib
import io
import json
import time
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easi3r import cli

from .helpers import FRAMES
from .robustness import GOLDEN_CONFIG, golden_weights

TIME_LIMIT = 20.0  # seconds per example; validation takes milliseconds, a 2-frame tiny run about one second

# the tiny recipe's keys, a few misspelt ones and some that name nothing
KEYS = [
    "backbone.device",
    "backbone.batch_size",
    "backbone.precision",
    "frames.size",
    "frames.stride",
    "frames.max_frames",
    "pairs.graph",
    "maps.single_pair_std",
    "rule.formula",
    "refine.k",
    "refine.seed",
    "refine.name",
    "threshold.classes",
    "threshold.bins",
    "reweight.layers",
    "reweight.decoders",
    "align.name",
    "align.iters",
    "align.lr",
    "align.lr_min",
    "scale.chunk_pairs",
    "scale.align_window",
    "export.exporters",
    "export.dilate",
    "seed",
    "refine.kk",
    "nosuch.key",
]

_SCALARS = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [".nan", ".inf", "-.inf", "null", "true", "~", "''", "'x'", "1e308", "-0", "0x10", "1_0"]
    ),
    st.text(max_size=12),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.builds(lambda k, v: "{" + k + ": " + v + "}", st.text("abc", min_size=1, max_size=3), inner),
        st.builds(lambda v: "${" + v, inner),
        st.builds(lambda v: "${" + v + "}", inner),
    ),
    max_leaves=6,
)
_OVERRIDES = st.builds(lambda key, value: f"{key}={value}", st.sampled_from(KEYS), _VALUES)

_TOKENS = [
    "src_mean", "src_std", "ref_mean", "ref_std", "src_maen", "x", "frame_minmax", "minmax", "exp", "log",
    "sqrt", "abs", "where", "clip", "(", ")", ",", "+", "-", "*", "/", "**", "^", "<", ">=", "==", "&", "|",
    "0", "1", "0.5", "1e308", "1e-300", ".", "'", "__import__", "os", "[", "]",
]  # fmt: skip
_FORMULAS = st.one_of(
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=14).map(" ".join),
    st.text(max_size=40),
)


_CHEAP = ("frames.size=256", "align.iters=5", "refine.k=16")


def _cli(*argv: str) -> tuple[int | None, str, float]:
    stderr = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            stderr.write(traceback.format_exc())
            code = None
    return code, stderr.getvalue(), time.perf_counter() - start


def _assert_clean(code: int | None, stderr: str, seconds: float) -> None:
    assert "Traceback" not in stderr, stderr
    assert code in (0, 2), stderr
    if code == 2:
        errors = [line for line in stderr.splitlines() if line.startswith("easi3r: error:")]
        assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert seconds < TIME_LIMIT


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(_OVERRIDES, min_size=1, max_size=3))
def test_validate_any_overrides(overrides):
    code, stderr, seconds = _cli("validate", "tiny", *overrides)
    _assert_clean(code, stderr, seconds)
    if code == 0:
        assert stderr == ""


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(formula=_FORMULAS)
def test_validate_any_formula(formula):
    code, stderr, seconds = _cli("validate", "tiny", f"rule.formula='{formula}'")
    _assert_clean(code, stderr, seconds)


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(overrides=st.lists(_OVERRIDES, min_size=1, max_size=2), formula=st.none() | _FORMULAS)
def test_run_any_overrides(tmp_path_factory, overrides, formula):
    """A real run on two frames: bad values fail in one line before or after work began, and leave no
    output folder, staging folder or cache behind."""
    scratch = tmp_path_factory.mktemp("fuzz-run")
    frames = [str(FRAMES / "00000.jpg"), str(FRAMES / "00001.jpg")]
    extra = [] if formula is None else [f"rule.formula='{formula}'"]
    # a valid run stays cheap: what sets the amount of work (frame size, iterations) is fixed last, and
    # fuzzed by test_validate_any_overrides only
    code, stderr, seconds = _cli(
        "run", *frames, "-o", str(scratch / "out"), "--recipe", "tiny", *overrides, *extra, *_CHEAP
    )
    _assert_clean(code, stderr, seconds)
    left = sorted(p.name for p in Path(scratch).iterdir())
    assert left == (["out"] if code == 0 else []), left


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10)
    | st.sampled_from(["RoPE100", "RoPE0", "RoPE-1", "cosine", "dpt", "linear", "pts3d", "exp"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_CONFIG_KEYS = [*GOLDEN_CONFIG, "colour", "landscape_only", "freeze"]


@pytest.fixture(scope="module")
def golden_safetensors(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file(golden_weights(), path)
    return path


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(changes=st.dictionaries(st.sampled_from(_CONFIG_KEYS), _JSON, min_size=1, max_size=3))
def test_run_any_checkpoint_config(tmp_path_factory, golden_safetensors, changes):
    """A hub folder whose config.json has fuzzed architecture fields, run on two frames."""
    scratch = tmp_path_factory.mktemp("fuzz-ckpt")
    hub = scratch / "ckpt"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({**GOLDEN_CONFIG, **changes}))
    (hub / "model.safetensors").symlink_to(golden_safetensors)
    frames = [str(FRAMES / "00000.jpg"), str(FRAMES / "00001.jpg")]
    code, stderr, seconds = _cli(
        "run", *frames, "-o", str(scratch / "out"), "--recipe", "tiny", "--checkpoint", str(hub), *_CHEAP
    )
    _assert_clean(code, stderr, seconds)
    assert sorted(p.name for p in scratch.iterdir()) == (["ckpt", "out"] if code == 0 else ["ckpt"])
