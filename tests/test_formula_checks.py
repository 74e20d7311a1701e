"""A mask formula is checked before it costs anything: statically and on sample maps when a recipe is
validated, on the video's own maps right after the rule combines them (issue 9)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from easi3r import pipeline
from easi3r.cli import main
from easi3r.errors import FormulaError
from easi3r.formula import EASI3R_RULE, check_rule, parse
from easi3r.frames import load_frames
from easi3r.maps import sample_frame_maps
from easi3r.recipes import available_recipes, load_recipe, validate_recipe

from .helpers import FRAMES

EXAMPLE_RECIPE = "examples/easi3r-example-plugin/src/easi3r_example_plugin/recipes/source_contrast.yaml"
MAPS = "ref_mean, ref_mean_raw, ref_std, ref_std_raw, src_mean, src_mean_raw, src_std, src_std_raw"
SAMPLES = "on sample maps made like real ones"

# formula → the exact line `easi3r validate` prints after "easi3r: error: "
REFUSED = {
    "frame_minmax(src_maen": "formula error at column 22: expected ')' to close the '(' at column 13 but found "
    "the end of the formula: frame_minmax(src_maen[[(end)]]",
    "frame_minmax((1 - src_maen) * src_std)": "formula error at column 19: unknown name 'src_maen' (did you "
    f"mean 'src_mean'?; available: {MAPS}): frame_minmax((1 - [[src_maen]]) * src_std)",
    "clip(src_mean, 0)": "formula error at column 1: clip(x, lo, hi) takes 3 arguments but 2 were given: "
    "[[clip]](src_mean, 0)",
    "0/0": f"formula error: '0/0' reads no map, so it cannot give a per-frame map; use at least one of {MAPS}",
    "minmax(1)": "formula error: 'minmax(1)' reads no map, so it cannot give a per-frame map; use at least one "
    f"of {MAPS}",
    "src_mean/0": "formula error at column 9: division by zero gives inf or nan: src_mean[[/]]0",
    "src_mean / (1 - 1)": "formula error at column 10: division by zero gives inf or nan: src_mean [[/]] (1 - 1)",
    "exp(1e308*src_mean)": "formula error at column 5: number too large: it is inf in float32: "
    "exp([[1e308]]*src_mean)",
    "src_mean + 0/0": "formula error at column 13: this part is nan whatever the maps: src_mean + 0[[/]]0",
    "src_mean * log(0)": "formula error at column 12: this part is -inf whatever the maps: "
    "src_mean * [[log]](0)",
    "log(src_std - 0.5)": f"formula error: 'log(src_std - 0.5)' gives nan {SAMPLES}, first in frame 0 (3 of 3 "
    "frames); a mask rule must be finite everywhere",
    "exp(1e30 * src_mean)": f"formula error: 'exp(1e30 * src_mean)' gives inf {SAMPLES}, first in frame 0 (3 "
    "of 3 frames); a mask rule must be finite everywhere",
    "src_mean_raw": f"formula error: 'src_mean_raw' gives a map of shape (3, 4, 5, 2) {SAMPLES}, not one value "
    "per frame token, (T, NH, NW) = (3, 4, 5); fuse a *_raw map's channels with mean_channels()",
    "src_mean * src_mean_raw": "formula error at column 10: cannot apply '*' to operands of shape (3, 4, 5) and "
    "(3, 4, 5, 2): The size of tensor a (5) must match the size of tensor b (2) at non-singleton dimension 3: "
    "src_mean [[*]] src_mean_raw",
}

# Finite on the sample maps (every frame has two pairs per side), -inf on a two-frame video, where each
# frame has one pair per side and its raw std falls back to 0.
DATA_DEPENDENT = "log(mean_channels(src_std_raw))"
DATA_DEPENDENT_MESSAGE = (
    "formula error: 'log(mean_channels(src_std_raw))' gives -inf on this video's maps, first in frame 0 "
    "(2 of 2 frames); a mask rule must be finite everywhere"
)


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI; assert the one-line refusal and return it without its prefix.

    ``validate`` prints nothing else; a ``run`` that got as far as its memory estimate has printed that line
    before the error.
    """
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert [line.startswith("easi3r: error: ") for line in lines].count(True) == 1, err
    assert lines[-1].startswith("easi3r: error: "), err
    if argv[0] == "validate":
        assert len(lines) == 1, err
    return lines[-1].removeprefix("easi3r: error: ")


@pytest.mark.parametrize("formula", sorted(REFUSED))
def test_validate_refuses_a_bad_formula(capsys: pytest.CaptureFixture[str], formula: str) -> None:
    assert _refused(capsys, "validate", "easi3r_dust3r", f"rule.formula={formula}") == REFUSED[formula]


def test_run_refuses_a_bad_formula_before_reading_frames_or_weights(
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    # Neither the frames nor the checkpoint exist: the formula is refused first.
    message = _refused(
        capsys, "run", str(tmp_path / "no_frames"), "-o", str(tmp_path / "out"), "--checkpoint",
        str(tmp_path / "no.pth"), "rule.formula=frame_minmax((1 - src_maen) * src_std)",
    )  # fmt: skip
    assert message == REFUSED["frame_minmax((1 - src_maen) * src_std)"]
    assert not (tmp_path / "out").exists()


# recipes that need a file the user gives at run time (validate checks that it is named and exists)
RUN_TIME_FILES = {
    "easi3r_dust3r_demo": ("align.flow_model.checkpoint", "Tartan-C-T-TSKH-spring540x960-M.pth")
}


@pytest.mark.parametrize("recipe", sorted(available_recipes()))
def test_every_builtin_recipe_still_validates(
    capsys: pytest.CaptureFixture[str], tmp_path, recipe: str
) -> None:
    overrides = []
    if recipe in RUN_TIME_FILES:
        key, name = RUN_TIME_FILES[recipe]
        (tmp_path / name).write_bytes(b"")
        overrides.append(f"{key}={tmp_path / name}")
    assert main(["validate", recipe, *overrides]) == 0
    assert capsys.readouterr().out == f"easi3r: recipe {recipe} is valid\n"


def test_the_demo_recipe_names_the_flow_weights_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "easi3r_dust3r_demo"]) == 2
    error = capsys.readouterr().err
    assert "align.flow_model.checkpoint" in error and "Tartan-C-T-TSKH-spring540x960-M.pth" in error


def test_the_example_plugin_recipe_is_not_a_formula() -> None:
    # Its rule is the plug-in's code: the formula checks leave it alone (the plug-in is not installed here).
    validate_recipe(load_recipe(EXAMPLE_RECIPE), check_names=False)


@pytest.mark.parametrize(
    "formula",
    [
        EASI3R_RULE,
        "frame_minmax(src_std)",
        "log(1 - src_mean)",  # fused maps never reach exactly 1
        "sigmoid(mean_channels(src_mean_raw))",
        "where(src_mean > 0.5, 1, 0)",
        "src_mean * 0",  # a constant map is finite: the threshold decides what it means
        DATA_DEPENDENT,
    ],
)
def test_sound_formulas_pass_the_checks(formula: str) -> None:
    sample = sample_frame_maps().maps
    assert check_rule(formula, sample, sample["src_mean"].shape) == parse(formula)


def test_sample_maps_are_made_like_real_ones() -> None:
    maps = sample_frame_maps().maps
    for name in ("src_mean", "src_std", "ref_mean", "ref_std"):
        fused, raw = maps[name], maps[f"{name}_raw"]
        assert fused.shape == (3, 4, 5) and raw.shape == (3, 4, 5, 2)
        assert fused.min() == 0 and fused.max() < 1  # the global min-max of fuse_channels
        assert torch.isfinite(raw).all()
    assert (maps["src_std_raw"] > 0).all()  # two pairs per frame and side: no std falls back to 0
    assert torch.equal(maps["src_mean"], sample_frame_maps().maps["src_mean"])  # seeded


def test_check_result_names_the_shape_and_the_first_bad_frame() -> None:
    formula = parse("log(src_std)")
    with pytest.raises(FormulaError) as info:
        formula.check_result(torch.zeros(2, 9, 16, 3), (2, 9, 16), on="on this video's maps")
    assert str(info.value) == (
        "formula error: 'log(src_std)' gives a map of shape (2, 9, 16, 3) on this video's maps, not one value "
        "per frame token, (T, NH, NW) = (2, 9, 16); fuse a *_raw map's channels with mean_channels()"
    )
    result = torch.zeros(4, 9, 16)
    result[2, 3, 4] = float("nan")
    result[3, 0, 0] = float("inf")
    with pytest.raises(FormulaError) as info:
        formula.check_result(result, (4, 9, 16), on="on this video's maps")
    assert str(info.value) == (
        "formula error: 'log(src_std)' gives nan on this video's maps, first in frame 2 (2 of 4 frames); a mask "
        "rule must be finite everywhere"
    )


def test_long_formulas_are_cut_in_messages() -> None:
    text = "0 + " * 40 + "1"
    with pytest.raises(FormulaError) as info:
        parse(text).check_static({"src_mean"})
    assert str(info.value) == (
        f"formula error: '{text[:77]}...' reads no map, so it cannot give a per-frame map; use at least one of "
        "src_mean"
    )


_PIECES = [
    "src_mean",
    "src_std_raw",
    "1",
    "0",
    "1e39",
    "-",
    "/",
    "*",
    "**",
    "(",
    ")",
    ",",
    "log(",
    "exp(",
    "frame_minmax(",
    "mean_channels(",
    "where(",
    "clip(",
    " > ",
]

_SAMPLE = sample_frame_maps().maps


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=16).map("".join))
def test_fuzz_checks_give_a_formula_or_one_formula_error(text: str) -> None:
    try:
        check_rule(text, _SAMPLE, _SAMPLE["src_mean"].shape)
    except FormulaError as exc:
        assert len(str(exc).splitlines()) == 1


def _two_frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("00000.jpg", "00001.jpg"):
        (folder / name).write_bytes((FRAMES / name).read_bytes())
    return folder


def test_run_refuses_a_formula_that_is_not_finite_on_the_video(capsys: pytest.CaptureFixture[str], tmp_path):
    out = tmp_path / "out"
    message = _refused(
        capsys,
        "run",
        str(_two_frames(tmp_path)),
        "-r",
        "tiny",
        "-o",
        str(out),
        f"rule.formula={DATA_DEPENDENT}",
    )
    assert message == DATA_DEPENDENT_MESSAGE
    assert not out.exists()


def test_the_check_comes_before_refinement(tmp_path) -> None:
    cfg = load_recipe("tiny", [f"rule.formula={DATA_DEPENDENT}"])
    validate_recipe(cfg)  # passes: only the video's maps show the problem
    frames = load_frames(_two_frames(tmp_path), size=cfg.frames.size)
    stages = pipeline.Stages.from_recipe(cfg)

    def refiner(*args: object) -> None:
        raise AssertionError("the refiner ran on a non-finite map")

    stages.refiner = refiner
    with pytest.raises(FormulaError) as info:
        pipeline.run(cfg, frames, stages)
    assert str(info.value) == DATA_DEPENDENT_MESSAGE
