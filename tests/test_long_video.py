"""Long videos: streamed pair outputs, --resume after kill -9, the memory estimate, pairs over ranks.

Every run here is a real ``easi3r run`` subprocess on the bundled tiny model, one thread each, so that
two runs sum in the same order and their files can be compared byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

from easi3r.cache import RunCache
from easi3r.demo import write_demo_video
from easi3r.errors import Easi3RError
from easi3r.estimate import ALIGN_BYTES_PER_PAIR_PIXEL, estimate_run
from easi3r.pairs import make_pairs
from easi3r.recipes import load_recipe
from easi3r.types import PairPredictions
from easi3r.windows import alignment_windows
from easi3r.writers import save_safetensors_streamed

# 10 frames → 50 ordered pairs, 8 pairs per chunk → 7 chunks per pass; windows of 6 frames → 3 windows
FAST = (
    "align.iters=15",
    "scale.chunk_pairs=8",
    "backbone.batch_size=4",
    "export.exporters=[masks,trajectory,depth]",
)
WINDOWED = ("scale.align_window=6", "scale.align_overlap=3")
ENV = {**os.environ, "EASI3R_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_demo_video(tmp_path_factory.mktemp("video") / "clip.mp4", n_frames=10)


def _command(video: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "easi3r", "run", str(video), "-o", str(out), "-r", "tiny", *FAST, *extra]


def _run(video: Path, out: Path, *extra: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = _command(video, out, *extra)
    return subprocess.run([cmd[0], *launcher, *cmd[1:]], env=ENV, capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    # run.yaml records the options of the run itself (e.g. scale.stream), timings.json its times;
    # everything else must match
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("run.yaml", "timings.json")
    }


def _assert_same_outputs(got: Path, expected: Path) -> None:
    a, b = _files(got), _files(expected)
    assert sorted(a) == sorted(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, f"files differ: {differ[:5]}"
    assert any(name.startswith("masks/dynamic_mask_") for name in a)
    assert "scene/trajectory_tum.txt" in a


@pytest.fixture(scope="module")
def reference(video, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs, in memory (the reference's way) and windowed."""
    root = tmp_path_factory.mktemp("reference")
    runs = {"plain": root / "plain", "windowed": root / "windowed"}
    for extra, out in (((), runs["plain"]), (WINDOWED, runs["windowed"])):
        done = _run(video, out, "scale.stream=false", *extra)
        assert done.returncode == 0, done.stderr
    return runs


@pytest.mark.slow
def test_streaming_writes_the_same_bytes_and_removes_its_cache(video, reference, tmp_path):
    out = tmp_path / "streamed"
    done = _run(video, out, "scale.stream=true")
    assert done.returncode == 0, done.stderr
    _assert_same_outputs(out, reference["plain"])
    assert not (tmp_path / "streamed.cache").exists()
    # the estimate comes before the work and names where the pair outputs go
    assert "10 frames of 256×144, 50 pairs per pass; estimated peak memory" in done.stderr
    assert f"streamed to {tmp_path / 'streamed.cache'}" in done.stderr


def _kill_when(cmd: list[str], ready, timeout: float = 120) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true; fail if it finishes first."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run finished before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


@pytest.mark.parametrize(
    ("point", "extra", "ready"),
    [
        ("pass 1", (), lambda cache: _count(cache / "pass1", "*.safetensors") >= 2),
        ("pass 2", (), lambda cache: _count(cache / "pass2", "*.safetensors") >= 2),
        ("alignment", WINDOWED, lambda cache: _count(cache / "align", "window-*.safetensors") >= 1),
    ],
)
@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_outputs(video, reference, tmp_path, point, extra, ready):
    out, cache = tmp_path / "out", tmp_path / "out.cache"
    _kill_when(_command(video, out, "scale.stream=true", *extra), lambda: ready(cache))
    assert not out.exists()  # nothing half-written where the outputs go
    kept = {p.name for p in cache.rglob("*.safetensors")}
    assert kept, point

    # a plain re-run refuses to mix with the interrupted one
    again = _run(video, out, "scale.stream=true", *extra)
    assert again.returncode == 2
    assert (
        again.stderr.strip()
        .splitlines()[-1]
        .endswith("pass --resume to continue it or --overwrite to start over")
    )

    resumed = _run(video, out, "scale.stream=true", *extra, "--resume", "--keep-cache")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_outputs(out, reference["windowed" if extra else "plain"])
    # the finished files were reused, not rewritten
    assert kept <= {p.name for p in cache.rglob("*.safetensors")}
    # the lock files the killed run left went with the resumed run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.cache"]


@pytest.mark.slow
def test_resume_errors_are_one_line(video, tmp_path):
    nothing = _run(video, tmp_path / "out", "--resume")
    assert nothing.returncode == 2
    assert nothing.stderr.strip().splitlines()[-1] == (
        f"easi3r: error: {tmp_path / 'out.cache'}: no run cache to resume (only streaming runs, scale.stream=true, keep one)"
    )
    in_memory = _run(video, tmp_path / "out", "--resume", "scale.stream=false")
    assert in_memory.returncode == 2
    assert "--resume needs the run cache: drop scale.stream=false" in in_memory.stderr

    RunCache(tmp_path / "out.cache", "another run")
    other = _run(video, tmp_path / "out", "--resume")
    assert other.returncode == 2
    assert "the cache belongs to another run" in other.stderr
    assert "Traceback" not in nothing.stderr + in_memory.stderr + other.stderr


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is needed"
)
@pytest.mark.slow
def test_two_ranks_share_the_pairs_of_one_video(video, reference, tmp_path):
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    two = _run(video, tmp_path / "two", *WINDOWED, "--keep-cache", launcher=torchrun)
    assert two.returncode == 0, two.stderr
    _assert_same_outputs(tmp_path / "two", reference["windowed"])
    # both ranks decoded: chunk k belongs to rank k % 2, and the estimate was printed once
    assert _count(tmp_path / "two.cache" / "pass1", "*.safetensors") == 7
    assert two.stderr.count("estimated peak memory") == 1


def _predictions(n: int, offset: float = 0.0) -> PairPredictions:
    g = torch.Generator().manual_seed(n)
    return PairPredictions(
        torch.randn(n, 3, 4, 3, generator=g) + offset,
        torch.rand(n, 3, 4, generator=g) + 1,
        torch.randn(n, 3, 4, 3, generator=g),
        torch.rand(n, 3, 4, generator=g) + 1,
    )


def test_stored_predictions_select_any_rows_in_any_order(tmp_path):
    cache = RunCache(tmp_path / "cache", "key")
    whole = _predictions(11)
    bounds = [(0, 4), (4, 8), (8, 11)]
    for start, end in bounds:
        part = whole.select(torch.arange(start, end))
        cache.save_chunk(
            "pass2", start, end, {k: getattr(part, k) for k in ("pts3d_1", "conf_1", "pts3d_2", "conf_2")}
        )
    stored = cache.predictions("pass2", bounds)
    assert len(stored) == 11
    rows = torch.tensor([9, 0, 5, 4, 10, 1])
    got, expected = stored.select(rows), whole.select(rows)
    for key in ("pts3d_1", "conf_1", "pts3d_2", "conf_2"):
        assert torch.equal(getattr(got, key), getattr(expected, key))
    with pytest.raises(IndexError):
        stored.select(torch.tensor([11]))


def test_cache_refuses_another_run_and_tells_how_to_continue(tmp_path):
    RunCache(tmp_path / "c", "first")
    with pytest.raises(Easi3RError, match="pass --resume to continue it"):
        RunCache(tmp_path / "c", "first")
    with pytest.raises(Easi3RError, match="belongs to another run"):
        RunCache(tmp_path / "c", "second", resume=True)
    (tmp_path / "c" / "pass1").mkdir()
    stale = tmp_path / "c" / "pass1" / ".000000-000007.safetensors.tmp-123"
    stale.write_bytes(b"half")
    RunCache(tmp_path / "c", "first", resume=True)
    assert not stale.exists()  # a killed writer's leftovers go, finished files stay


def test_streamed_safetensors_match_the_safetensors_library(tmp_path):
    tensors = {
        "pairs": torch.arange(14).view(7, 2),
        "pts3d_1": torch.randn(7, 3, 5, 3),
        "conf_1": torch.rand(7, 3, 5),
        "half": torch.randn(7, 2).to(torch.bfloat16),
        "mask": torch.rand(7, 2) > 0.5,
    }
    theirs = safetensors_save(tensors, metadata={"note": "x"})
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    blocks = [
        (name, start, t[start : start + 3]) for name, t in reversed(tensors.items()) for start in (0, 3, 6)
    ]
    ours = save_safetensors_streamed(tmp_path / "two.safetensors", layout, blocks, {"note": "x"}).read_bytes()
    # the same header (keys sorted by us), the same padding and the same data bytes
    n_theirs, n_ours = struct.unpack("<Q", theirs[:8])[0], struct.unpack("<Q", ours[:8])[0]
    assert n_theirs == n_ours
    assert json.loads(theirs[8 : 8 + n_theirs]) == json.loads(ours[8 : 8 + n_ours])
    assert theirs[8 + n_theirs :] == ours[8 + n_ours :]
    back = load_file(str(tmp_path / "two.safetensors"))
    assert all(torch.equal(back[name], t) for name, t in tensors.items())
    with pytest.raises(ValueError, match="rows missing"):
        save_safetensors_streamed(tmp_path / "three.safetensors", layout, blocks[:-1])
    assert not (tmp_path / "three.safetensors").exists()


def test_memory_estimate_parts_and_advice():
    cfg = load_recipe("tiny", ["scale.stream=true"])
    n, height, width = 300, 144, 256
    pairs = make_pairs("swinstride-5-noncyclic", n, symmetrize=True, cap_window=True)
    backbone = SimpleNamespace(
        model=torch.nn.Linear(10, 10), patch_size=16, decoder_layers=3, decoder_heads=3
    )
    windows = alignment_windows(n, 30, 5)
    estimate = estimate_run(cfg, torch.zeros(n, 3, height, width), pairs, backbone, windows)
    pair_bytes = height * width * 8 * 4  # two pointmaps and two confidences, float32
    assert estimate.pair_outputs == len(pairs) * pair_bytes  # pass 1 keeps no predictions by default
    assert estimate.chunk == 2 * 64 * pair_bytes
    in_window = max(int(((pairs >= s) & (pairs < e)).all(1).sum()) for s, e in windows)
    assert in_window < len(pairs) / 5
    assert estimate.alignment == in_window * height * width * ALIGN_BYTES_PER_PAIR_PIXEL
    assert estimate.maps == 2 * len(pairs) * 9 * 16 * 9 * 2 * 4  # both passes, 144 tokens, 3·3 channels
    assert estimate.model == 110 * 4
    assert estimate.total(streamed=True) < estimate.total(streamed=False)

    tight = estimate.total(streamed=False) - 1
    assert "scale.stream=true" in estimate.advice(False, tight)
    assert estimate.advice(True, estimate.total(streamed=True)) is None
    everything = estimate_run(cfg, torch.zeros(n, 3, height, width), pairs, backbone, None)
    assert "scale.align_window" in everything.advice(True, everything.alignment)
    line = estimate.describe(True, Path("out.cache"), 8 * 1024**3)
    assert line.startswith("300 frames of 256×144, 2950 pairs per pass; estimated peak memory ")
    assert line.endswith(
        "streamed to out.cache, alignment 1.13 over windows of 30 frames) of 8.00 GiB available"
    )


def test_a_folder_that_is_not_a_cache_is_never_used_nor_deleted(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(Easi3RError, match="is not a run cache; choose another --cache"):
        RunCache(folder, "key")
    RunCache.attach(folder).remove()  # what --overwrite does first
    assert (folder / "notes.txt").read_text() == "precious"
