"""``easi3r eval`` under torchrun: two processes share the sequences out and write the summary one
process writes, with the same numbers, failures and exit status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from easi3r.distributed import Ranks, rank_device
from easi3r.errors import Easi3RError
from easi3r.synthetic import make_scene

from .test_eval import FAST, make_davis

NAMES = ("a", "b-broken", "c", "d", "e")  # dealt as a, c, e to rank 0 and b-broken, d to rank 1


def _eval(*launcher: str, root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    # one thread per process, as torchrun sets for several: both runs then sum in the same order
    env = {**os.environ, "EASI3R_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    args = ["-m", "easi3r", "eval", "-d", "davis", "--root", str(root), "-r", "tiny", "-o", str(out), *FAST]
    return subprocess.run(
        [sys.executable, *launcher, *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is needed"
)
@pytest.mark.slow
def test_two_processes_write_what_one_writes(tmp_path):
    root = tmp_path / "DAVIS"
    for seed, name in enumerate(NAMES):
        make_davis(root, name, make_scene(n_frames=3, size=(48, 80), n_objects=2, seed=seed))
    # a failure on rank 1 must reach rank 0's summary and every rank's exit status
    (root / "JPEGImages/480p/b-broken/00001.jpg").write_bytes(b"not a jpeg")

    one = _eval(root=root, out=tmp_path / "one")
    # --standalone: a local rendezvous on a free port, so parallel test runs cannot collide
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    two = _eval(*torchrun, root=root, out=tmp_path / "two")
    assert one.returncode == 1, one.stderr
    assert two.returncode == 1, two.stderr
    # each rank took the failure path of the command (status 1), not a crash
    assert two.stderr.count("easi3r: error: 1 of 5 sequences failed (first: b-broken: ") == 2, two.stderr

    # sequence i ran on rank i % 2, and nowhere else
    ran = re.findall(r"easi3r eval: rank (\d): \[(\d)/5\] ([\w-]+): ", two.stderr)
    assert sorted(ran) == sorted((str((i - 1) % 2), str(i), NAMES[i - 1]) for i in range(1, 6))

    expected = json.loads((tmp_path / "one" / "summary.json").read_text())
    got = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert got["failed"] == expected["failed"] == ["b-broken"]
    assert list(got["sequences"]) == list(NAMES)  # the reader's order, not the ranks'
    for name in NAMES:
        want, have = expected["sequences"][name], got["sequences"][name]
        assert have.get("error") == want.get("error")
        assert have.get("frames") == want.get("frames")
        assert have.get("metrics", {}) == pytest.approx(want.get("metrics", {}), abs=1e-9)
    assert set(got["mean"]) == {"JM", "JR", "F"}
    assert got["mean"] == pytest.approx(expected["mean"], abs=1e-9)
    for key in ("dataset", "root", "recipe", "overrides", "mask_convention", "depth_align"):
        assert got[key] == expected[key]

    # both ranks' run folders, no trace of the failed one, one summary and no leftovers
    out = tmp_path / "two"
    assert sorted(p.name for p in out.iterdir()) == sorted(["a", "c", "d", "e", "summary.json", "summary.md"])
    for name in ("a", "c", "d", "e"):
        metrics = json.loads((out / name / "metrics.json").read_text())["metrics"]
        assert metrics == got["sequences"][name]["metrics"]
        assert len(list((out / name / "masks").glob("dynamic_mask_*.png"))) == 3
    assert "- b-broken: " in (out / "summary.md").read_text()

    # the output-folder check is rank 0's, and every rank stops on it before running anything
    again = _eval(*torchrun, root=root, out=out)
    assert again.returncode == 1  # torchrun's status when a worker failed; the workers' is 2
    assert again.stderr.count("easi3r: error: ") == 2, again.stderr
    assert again.stderr.count("output folder exists and is not empty; pass --overwrite") == 2
    assert "easi3r eval: rank" not in again.stderr


def test_one_process_is_rank_0_of_1():
    def refuse() -> None:
        raise Easi3RError("refused")

    ranks = Ranks()
    assert ranks.is_main and ranks.log_prefix == "" and ranks.overrides() == []
    assert ranks.shard(["a", "b"]) == ["a", "b"] and ranks.gather(["a", "b"]) == ["a", "b"]
    with pytest.raises(Easi3RError, match="refused"):
        ranks.check_on_main(refuse)


def test_each_rank_gets_its_own_gpu(monkeypatch):
    assert Ranks(rank=1, world_size=3).shard(list(range(8))) == [1, 4, 7]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("auto", 1) == "cuda:1"
    assert rank_device("cuda", 0) == "cuda:0"
    # an explicit choice stays
    assert rank_device("cpu", 1) is None
    assert rank_device("cuda:0", 1) is None
    with pytest.raises(Easi3RError, match="no GPU of its own \\(2 visible\\): start at most 2 processes"):
        rank_device("auto", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", 1) is None
