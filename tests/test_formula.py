"""The mask-rule expression language: exactness of the default rule, grammar, functions, errors, safety."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from easi3r.cli import main
from easi3r.errors import FormulaError
from easi3r.formula import EASI3R_RULE, FUNCTIONS, MAX_DEPTH, MAX_LENGTH, Formula, check_rule, evaluate, parse
from easi3r.maps import sample_frame_maps

GOLDEN = Path(__file__).parent / "data" / "golden" / "net" / "reference.safetensors"
SHAPE = (5, 9, 16)


def _maps(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=g) for name in ("src_mean", "src_std", "ref_mean", "ref_std")}


def _hard_coded_rule(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """method.md §4 written out by hand: D = (1-a)·b·c·(1-d), then min-max per frame with eps 1e-6."""
    d_map = (1 - a) * b * c * (1 - d)
    lo = d_map.amin(dim=(1, 2), keepdim=True)
    hi = d_map.amax(dim=(1, 2), keepdim=True)
    return (d_map - lo) / (hi - lo + 1e-6)


def _scalar(text: str, **maps: torch.Tensor | float) -> float:
    return evaluate(text, maps).item()


def _error(text: str, maps: dict[str, torch.Tensor | float] | None = None) -> str:
    with pytest.raises(FormulaError) as info:
        evaluate(text, maps if maps is not None else {"a": torch.ones(2, 3)})
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("formula error")
    return message


# ----------------------------------------------------------------------------------------------- default rule
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_rule_matches_the_hard_coded_formula(seed: int) -> None:
    maps = _maps(seed)
    expected = _hard_coded_rule(maps["src_mean"], maps["src_std"], maps["ref_mean"], maps["ref_std"])
    result = evaluate(EASI3R_RULE, maps)
    assert result.dtype == torch.float32
    assert result.shape == SHAPE
    assert torch.equal(result, expected)  # same operations in the same order: bitwise equal


def test_default_rule_names() -> None:
    assert parse(EASI3R_RULE).names == {"src_mean", "src_std", "ref_mean", "ref_std"}


@pytest.mark.parametrize("stage", ["pass1", "pass2"])
def test_default_rule_matches_the_golden_reference(stage: str) -> None:
    golden = load_file(str(GOLDEN))
    maps = {
        name: torch.from_numpy(golden[f"{stage}/cross_att_{key}_fused"])
        for name, key in [
            ("src_mean", "k_i_mean"),
            ("src_std", "k_i_var"),
            ("ref_mean", "k_j_mean"),
            ("ref_std", "k_j_var"),
        ]
    }
    expected = torch.from_numpy(golden[f"{stage}/dynamic_map"])
    result = evaluate(EASI3R_RULE, maps)
    assert result.shape == expected.shape == SHAPE
    assert torch.allclose(result, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- grammar
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2**3**2", 512.0),  # right-associative
        ("-2**2", -4.0),  # unary minus binds looser than ** (as in Python)
        ("(-2)**2", 4.0),
        ("2**-1", 0.5),  # a signed exponent
        ("1-2-3", -4.0),  # left-associative
        ("8/4/2", 1.0),
        ("1+2*3", 7.0),
        ("(1+2)*3", 9.0),
        ("--3", 3.0),
        ("+-+3", -3.0),
        ("2*-3", -6.0),
        ("1e-6 * 1e6", 1.0),
        ("2.5E+1", 25.0),
        (".5 + 1.", 1.5),
        ("007", 7.0),
        ("1 + 2 < 4", 1.0),  # arithmetic binds tighter than comparison
        ("1 < 2 & 3 < 2", 0.0),  # unlike Python, & binds looser than comparisons
        ("1 < 2 | 3 < 2", 1.0),
        ("0 | 0 & 1", 0.0),
        ("1 | 0 & 0", 1.0),  # & binds tighter than |
        ("2 & -1", 1.0),  # any non-zero value is true
        ("\n  1 +\t2 ", 3.0),  # whitespace of a YAML block scalar
    ],
)
def test_precedence_and_associativity(text: str, value: float) -> None:
    assert _scalar(text) == value


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("<", [1, 0, 0]),
        ("<=", [1, 1, 0]),
        (">", [0, 0, 1]),
        (">=", [0, 1, 1]),
        ("==", [0, 1, 0]),
        ("!=", [1, 0, 1]),
    ],
)
def test_comparisons_give_float_masks(op: str, expected: list[float]) -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    result = evaluate(f"a {op} 2", {"a": a})
    assert result.dtype == torch.float32
    assert result.tolist() == expected


def test_names_numbers_and_broadcasting() -> None:
    a = torch.rand(2, 3, 4)
    feats = torch.rand(2, 3, 4, 5)
    assert torch.equal(evaluate("a * k", {"a": a, "k": 2.0}), a * 2)
    assert evaluate("a + 0", {"a": a.double()}).dtype == torch.float64  # constants follow the maps
    assert evaluate("a + 1 + b", {"a": a, "b": a[:1]}).shape == (2, 3, 4)  # torch broadcasting
    assert evaluate("mean_channels(feats) - a", {"feats": feats, "a": a}).shape == (2, 3, 4)
    assert parse("a + b * a").names == {"a", "b"}
    assert isinstance(parse("1"), Formula)
    assert evaluate("1 / 0", {}).item() == math.inf  # torch semantics, no Python exception


# ----------------------------------------------------------------------------------------------- functions
def test_every_function() -> None:
    x = torch.tensor([[[-1.0, 0.25], [4.0, 9.0]], [[0.0, 1.0], [2.0, 3.0]]])
    y = torch.full_like(x, 2.0)
    feats = torch.rand(2, 2, 2, 3)
    maps = {"x": x, "y": y, "feats": feats}
    expected = {
        "abs(x)": x.abs(),
        "channel(feats, 1)": feats[..., 1],
        "clip(x, 0, 2)": x.clamp(0, 2),
        "exp(x)": x.exp(),
        "frame_minmax(x)": torch.stack([(f - f.min()) / (f.max() - f.min() + 1e-6) for f in x]),
        "log(abs(x) + 1)": (x.abs() + 1).log(),
        "max(x, y)": torch.maximum(x, y),
        "mean_channels(feats)": feats.mean(-1),
        "mean_channels(x)": x,  # 3-D maps pass through
        "min(x, y)": torch.minimum(x, y),
        "minmax(x)": (x - x.min()) / (x.max() - x.min() + 1e-6),
        "pow(x, y)": x**2,
        "sigmoid(x)": torch.sigmoid(x),
        "sqrt(abs(x))": x.abs().sqrt(),
        "where(x > 1, x, -x)": torch.where(x > 1, x, -x),
    }
    assert {text.split("(")[0] for text in expected} == set(FUNCTIONS)
    for text, value in expected.items():
        assert torch.allclose(evaluate(text, maps), value, atol=1e-7), text


def test_frame_minmax_on_channel_maps_uses_all_axes_but_the_first() -> None:
    feats = torch.rand(3, 2, 2, 4)
    result = evaluate("frame_minmax(feats)", {"feats": feats})
    for t in range(3):
        f = feats[t]
        assert torch.allclose(result[t], (f - f.min()) / (f.max() - f.min() + 1e-6))


# channel c = layer * heads + head of a raw (T, NH, NW, C) map; the index is a literal whole number.
@pytest.mark.parametrize("index", ["0", "4", "5", "5.", "5e0", "5.0"])
def test_channel_selects_one_channel_of_a_raw_map(index: str) -> None:
    raw = torch.rand(3, 4, 5, 6)
    result = evaluate(f"channel(raw, {index})", {"raw": raw})
    assert result.shape == (3, 4, 5)
    assert torch.equal(result, raw[..., int(float(index))])


def test_channel_combines_like_any_map() -> None:
    raw = torch.rand(2, 3, 4, 6)
    result = evaluate("frame_minmax(minmax(channel(raw, 2)) * (1 - minmax(channel(raw, 5))))", {"raw": raw})
    a, b = raw[..., 2], raw[..., 5]
    expected = _frame_minmax_by_hand(
        ((a - a.min()) / (a.max() - a.min() + 1e-6)) * (1 - (b - b.min()) / (b.max() - b.min() + 1e-6))
    )
    assert torch.allclose(result, expected)


def _frame_minmax_by_hand(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([(f - f.min()) / (f.max() - f.min() + 1e-6) for f in x])


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("channel(raw, 1.5)", 14, "channel(x, i): i must be a whole number written out, such as 5: "
         "channel(raw, [[1.5]])"),
        ("channel(raw, -1)", 14, "channel(x, i): i must not be negative: channel(raw, [[-1]])"),
        ("channel(raw, 1e400)", 14, "i must be a whole number"),  # inf is not a whole number
        ("channel(raw, raw)", 14, "i must be a whole number"),  # an index cannot depend on the maps
        ("channel(raw, 1 + 1)", 16, "i must be a whole number"),
        ("channel(raw, 6)", 1, "cannot apply channel() to operands of shape (2, 3, 4, 6) and (): channel 6 is "
         "out of range: this map has channels 0 to 5: [[channel]](raw, 6)"),
        ("channel(fused, 0)", 1, "channel() needs a 4-D (T, NH, NW, C) map such as src_mean_raw, got 3-D"),
        ("channel(2, 0)", 1, "got 0-D"),
    ],
)  # fmt: skip
def test_channel_errors_name_the_column_and_the_valid_range(text: str, column: int, fragment: str) -> None:
    message = _error(text, {"raw": torch.rand(2, 3, 4, 6), "fused": torch.rand(2, 3, 4)})
    assert f"at column {column}:" in message
    assert fragment in message, message


def test_channel_beyond_the_sample_maps_validates_and_is_checked_on_the_video(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The sample maps have 2 channels; the tiny network 3 layers x 3 heads = 9: channel 5 is valid for a
    # recipe, and so is 100, which only the video's maps can refuse.
    for index in (5, 100):
        assert (
            main(["validate", "tiny", f"rule.formula=frame_minmax(minmax(channel(src_mean_raw, {index})))"])
            == 0
        )
        assert "is valid" in capsys.readouterr().out
    sample = sample_frame_maps().maps
    check_rule("channel(src_std_raw, 100)", sample, sample["src_mean"].shape)
    video = {**sample, "src_std_raw": torch.rand(3, 4, 5, 9)}
    assert _error("channel(src_std_raw, 9)", video).endswith(
        "channel 9 is out of range: this map has channels 0 to 8: [[channel]](src_std_raw, 9)"
    )


def test_validate_refuses_a_bad_channel_index_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "tiny", "rule.formula=channel(src_mean_raw, 2.5)"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "i must be a whole number" in err, err


def test_function_table_documents_itself() -> None:
    for name, spec in FUNCTIONS.items():
        assert spec.doc and "\n" not in spec.doc
        assert spec.signature(name).startswith(f"{name}(")


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("text", "column", "fragments"),
    [
        (
            "(1 - src_maen) * a",
            6,
            ["unknown name 'src_maen'", "did you mean 'src_mean'?", "src_mean", "[[src_maen]]"],
        ),
        ("sqr(a)", 1, ["unknown function 'sqr'", "did you mean 'sqrt'?", "frame_minmax", "[[sqr]]"]),
        ("sqrt(a, a)", 1, ["sqrt(x) takes 1 argument but 2 were given"]),
        ("clip(a)", 1, ["clip(x, lo, hi) takes 3 arguments but 1 were given"]),
        ("a $ 2", 3, ["unexpected character '$'", "[[$]]"]),
        ("a ^ 2", 3, ["'^' is not an operator; use '**'"]),
        ("a = 2", 3, ["use '=='"]),
        ("a ! 2", 3, ["'!' is only allowed in '!='"]),
        ("a.b", 2, ["no attribute access", "a[[.]]b"]),
        ("a['x']", 2, ["subscripts"]),
        ('"a"', 1, ["strings"]),
        ("(a + 1", 7, ["expected ')' to close the '(' at column 1", "the end of the formula", "[[(end)]]"]),
        ("sqrt(a", 7, ["expected ')' to close the '(' at column 5"]),
        ("a + 1)", 6, ["unmatched ')'"]),
        ("a a", 3, ["unexpected name 'a' after a complete expression (missing operator?)"]),
        ("a > 0 and a < 1", 7, ["unexpected name 'and'", "use '&'"]),
        ("a < 1 < 2", 7, ["comparisons cannot be chained"]),
        ("a +", 4, ["expected a number, a name or '(' but found the end of the formula"]),
        ("max(a,)", 7, ["but found op ')'"]),
        ("", 1, ["formula is empty"]),
        ("   \n ", 6, ["formula is empty"]),
        ("1e", 1, ["malformed number '1e'"]),
        ("1.2.3", 1, ["malformed number '1.2.3'"]),
        ("2a", 1, ["malformed number '2a'"]),
        ("é", 1, ["unexpected character 'é'"]),
        ("a + b", 5, ["unknown name 'b'", "available: a"]),
        ("a + c", 3, ["shape (2, 3) and (4,)", "[[+]]"]),
        ("frame_minmax(1)", 1, ["frame_minmax()", "frame axis"]),
    ],
)
def test_error_messages_point_at_the_token(text: str, column: int, fragments: list[str]) -> None:
    message = _error(text, {"a": torch.ones(2, 3), "c": torch.ones(4), "src_mean": torch.ones(2, 3)})
    assert f"at column {column}:" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_errors_stay_on_one_line_with_multiline_sources() -> None:
    message = _error("a +\n\u2028  zz\r\n* 2")
    assert "unknown name 'zz'" in message and "[[zz]]" in message


def test_long_formulas_excerpt_around_the_token() -> None:
    message = _error("a + " * 20 + "b" + " + a" * 20)
    assert message.count("...") == 2 and "[[b]]" in message and len(message) < 200


def test_bad_inputs_to_the_api() -> None:
    with pytest.raises(FormulaError, match="must be text"):
        parse(1.5)  # type: ignore[arg-type]
    with pytest.raises(FormulaError, match="map 'a' is a list"):
        evaluate("a + 1", {"a": [1, 2]})  # type: ignore[dict-item]


# ----------------------------------------------------------------------------------------------- limits
def test_length_limit() -> None:
    assert _error("a" * (MAX_LENGTH + 1)).startswith(f"formula error at column {MAX_LENGTH + 1}:")
    parse("+".join(["1"] * 10) + " " * (MAX_LENGTH - 19))


@pytest.mark.parametrize(
    "text",
    [
        "(" * 999 + "a" + ")" * 999,
        "sqrt(" * 300 + "a" + ")" * 300,
        "-" * 1999 + "a",
        "2**" * 600 + "2",
        "+".join(["a"] * 1000),
        "a*(" * 400 + "a" + ")" * 400,
    ],
    ids=["parentheses", "calls", "signs", "powers", "sum", "products"],
)
def test_deep_nesting_is_an_error_not_a_recursion_error(text: str) -> None:
    assert "nested more than" in _error(text)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = MAX_DEPTH - 1  # the innermost name is one more level of the tree
    assert _scalar("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH, a=torch.tensor(2.0)) == 2.0
    assert _scalar("-" * depth + "a", a=torch.tensor(2.0)) == (-2.0 if depth % 2 else 2.0)


# ----------------------------------------------------------------------------------------------- safety
@pytest.mark.parametrize(
    "name", ["__builtins__", "__class__", "__import__", "os", "open", "eval", "torch", "self"]
)
def test_python_names_reach_nothing(name: str) -> None:
    assert f"unknown name '{name}'" in _error(name)
    assert f"unknown name '{name}'" in _error(f"a + {name}")


@pytest.mark.parametrize(
    "text",
    ["a.b", "().__class__", "os.system", "a.__class__.__bases__", "__import__('os').system('true')", "a[0]"],
)
def test_attribute_subscript_and_string_syntax_is_rejected(text: str) -> None:
    _error(text)


def test_calls_only_reach_whitelisted_functions() -> None:
    for name in ("eval", "exec", "getattr", "open", "__import__", "a"):
        assert f"unknown function '{name}'" in _error(f"{name}(a)")


_FRAGMENTS = [
    *"abxyz019_.()+-*/<>=!&|^,'\" e",
    "**",
    "__import__",
    "os.system",
    "().__class__",
    "sqrt(",
    "where(",
    "frame_minmax(",
    "1e-6",
    "1e400",
]
_FUZZ_MAPS = {"a": torch.rand(2, 3), "b": torch.rand(2, 3), "x": torch.rand(3), "y": 2.0}


def _outcome(text: str) -> None:
    try:
        result = evaluate(text, _FUZZ_MAPS)
    except FormulaError as exc:
        assert len(str(exc).splitlines()) == 1
    else:
        assert isinstance(result, torch.Tensor)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join))
def test_fuzz_fragments_give_a_tensor_or_a_formula_error(text: str) -> None:
    _outcome(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_any_text_gives_a_tensor_or_a_formula_error(text: str) -> None:
    _outcome(text)


def _well_formed() -> st.SearchStrategy[str]:
    """Syntactically valid formulas, to exercise evaluation (shape errors, bad domains), not the lexer."""
    leaves = st.sampled_from(["a", "b", "x", "y", "0", "1", "2.5", "1e-6", "1e400"])

    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        ops = st.sampled_from(["+", "-", "*", "/", "**", "<", "==", "&", "|"])
        calls = st.sampled_from(sorted(FUNCTIONS)).flatmap(
            lambda name: st.lists(
                children, min_size=len(FUNCTIONS[name].params), max_size=len(FUNCTIONS[name].params)
            ).map(lambda args: f"{name}({', '.join(args)})")
        )
        binary = st.tuples(children, ops, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        return st.one_of(binary, children.map(lambda c: f"-{c}"), calls)

    return st.recursive(leaves, extend, max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_well_formed())
def test_fuzz_well_formed_formulas(text: str) -> None:
    _outcome(text)
