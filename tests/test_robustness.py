"""Every case of ``tests/robustness.py`` ends in one clean error line, run in-process (the script runs them
as real processes and writes ``docs/robustness.md``)."""

from __future__ import annotations

import contextlib
import io
import traceback

import pytest

from easi3r import cli

from .robustness import CASES, Case, run_case


def _in_process(argv: list[str]) -> tuple[int | None, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            stderr.write(traceback.format_exc())
            code = None
    return code, stderr.getvalue()


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.group}: {case.name}")
def test_bad_input_gives_one_clean_line(case: Case, tmp_path):
    outcome = run_case(case, tmp_path, _in_process)
    assert not outcome.problems(case), outcome.stderr[-2000:]


def test_documented_cases_are_the_cases():
    """docs/robustness.md is generated from the case list: a case added or renamed needs a new report."""
    from pathlib import Path

    report = (Path(__file__).parents[1] / "docs" / "robustness.md").read_text()
    assert f"**{len(CASES)} tried, {len(CASES)} clean.**" in report
    for case in CASES:
        assert f"| {case.name} |" in report.replace("\\|", "|"), case.name
