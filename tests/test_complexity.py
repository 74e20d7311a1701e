"""No function of the package is above radon grade C (cyclomatic complexity ≤ 20): past that, a function
does too many things to be read, or tested branch by branch, in one go; split it into named steps."""

from __future__ import annotations

from pathlib import Path

import pytest

radon_complexity = pytest.importorskip("radon.complexity")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("easi3r", "backends", "strategies")
MAX_COMPLEXITY = 20  # the top of radon's grade C

# "path::qualified name" → why it may stay above the limit. Empty: every function meets it.
EXCEPTIONS: dict[str, str] = {}


def _too_complex() -> list[str]:
    found = []
    for directory in PACKAGE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for block in radon_complexity.cc_visit(path.read_text(encoding="utf-8")):
                name = f"{path.relative_to(ROOT).as_posix()}::{block.fullname}"
                if block.complexity > MAX_COMPLEXITY and name not in EXCEPTIONS:
                    found.append(f"{name} (line {block.lineno}): {block.complexity}")
    return found


def test_no_function_is_above_grade_c():
    too_complex = _too_complex()
    assert not too_complex, (
        f"cyclomatic complexity above {MAX_COMPLEXITY} (radon grade D or worse); split these into named "
        "steps:\n" + "\n".join(too_complex)
    )
