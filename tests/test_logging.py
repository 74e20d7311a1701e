"""What a run prints: stage lines, progress off a terminal, -q, timings.json, the resume message."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from easi3r.progress import LoggedProgress

from .helpers import FRAMES

STAGES = ["encode", "pass 1", "masks", "pass 2", "masks (pass 2)", "align", "write outputs"]
ALL_STAGES = ["load frames", "build backbone", *STAGES]
WARNING = (
    "easi3r: warning: backbone 'dust3r' preset 'tiny' has random test weights (bundled): its masks and "
    "geometry mean nothing; give --checkpoint"
)
# progress is logged only off a terminal and without EASI3R_NO_PROGRESS; a pipe is not a terminal
ENV = {key: value for key, value in os.environ.items() if key != "EASI3R_NO_PROGRESS"} | {
    "OMP_NUM_THREADS": "1"
}


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "easi3r", "run", str(FRAMES), "--recipe", "tiny", "-o", str(out)]
    cmd += ["frames.max_frames=3", "align.iters=5", *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_piped_run_logs_every_stage_its_progress_and_timings(tmp_path):
    out = tmp_path / "out"
    done = _run(out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"easi3r: wrote {out} (3 frames, 4 pairs, ")
    lines = done.stderr.splitlines()
    assert lines[0] == WARNING
    for name in STAGES:
        assert f"easi3r: {name}: started" in lines, name
        assert any(re.fullmatch(rf"easi3r: {re.escape(name)}: done in \d+\.\d s", line) for line in lines)
    assert any(re.fullmatch(r"easi3r: pass 1: \d+/4 pairs \(\d+ %\), \d+ s", line) for line in lines)
    assert lines[-1].startswith("easi3r:   total ")  # the closing summary, one line per stage

    timings = json.loads((out / "timings.json").read_text())
    assert [s["name"] for s in timings["stages"]] == ALL_STAGES
    assert all(s["seconds"] >= 0 and s["peak_rss_mib"] > 0 for s in timings["stages"])
    assert timings["total_seconds"] >= max(s["seconds"] for s in timings["stages"])


@pytest.mark.slow
def test_quiet_prints_the_output_path_and_warnings_only(tmp_path):
    out = tmp_path / "out"
    done = _run(out, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"easi3r: wrote {out} ")
    assert done.stderr.splitlines() == [WARNING]


@pytest.mark.slow
def test_resume_says_which_chunks_it_reused(tmp_path):
    out = tmp_path / "out"
    first = _run(out, "scale.stream=true", "--keep-cache", "-q")
    assert first.returncode == 0, first.stderr
    shutil.rmtree(out)
    again = _run(out, "scale.stream=true", "--resume")
    assert again.returncode == 0, again.stderr
    assert "easi3r: pass 1: reused 1 of 1 chunks from the cache" in again.stderr.splitlines()
    assert "easi3r: pass 2: reused 1 of 1 chunks from the cache" in again.stderr.splitlines()


def test_progress_lines_come_every_tenth(caplog):
    with caplog.at_level(logging.INFO, logger="easi3r"), LoggedProgress(100, "pass 1", "pair") as bar:
        for _ in range(100):
            bar.update(1)
    counts = [int(re.search(r": (\d+)/100 pairs", r.getMessage())[1]) for r in caplog.records]
    assert counts == list(range(10, 101, 10))


@pytest.mark.parametrize("flag", ["-v", "-q"])
def test_verbosity_is_accepted_after_every_command(flag):
    from easi3r.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["validate", "tiny", flag])
    assert args.verbosity == {"-v": "verbose", "-q": "quiet"}[flag]
    assert parser.parse_args(["plugins"]).verbosity == "normal"
