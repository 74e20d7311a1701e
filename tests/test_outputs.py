"""Nothing is left behind: one run per output folder or cache, no staging folder after a failure or a
kill -9, a full disk as one line, and damaged cache chunks recomputed on --resume.

Runs are the tiny recipe on two or three frames; the two-runs test starts a real ``easi3r run`` process
and keeps it in its output-writing step.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from easi3r.cli import main
from easi3r.errors import Easi3RError
from easi3r.outputs import hold_lock

from .helpers import FRAMES

ENV = {**os.environ, "EASI3R_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
QUICK = ("align.name=none",)
# three frames, one pair per chunk: 4 chunks per pass
STREAM = ("scale.stream=true", "scale.chunk_pairs=1", "backbone.batch_size=1")


def frames(n: int) -> list[str]:
    return [str(FRAMES / f"{i:05d}.jpg") for i in range(n)]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def one_thread():
    # in-process runs compared byte for byte must sum in the same order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- one run at a time ------------------------------------------------------------------------------

# a real `easi3r run` that stops in its output-writing step, its staging folder half written
STUCK_WRITING = textwrap.dedent(
    """
    import sys, time
    import easi3r.api as api

    def write_outputs(result, out_dir):
        (out_dir / "half.bin").write_bytes(bytes(1000))
        print("writing", flush=True)
        time.sleep(600)

    api.write_outputs = write_outputs
    from easi3r.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_killed_runs_leftovers_go(capsys, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    args = [*frames(2), "-r", "tiny", "-o", str(out), *QUICK]
    first = subprocess.Popen(
        [sys.executable, "-c", STUCK_WRITING, "run", *args], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline() == "writing\n"
        (partial,) = work.glob(".out.partial-*")
        (work / ".out.old-abcd1234").mkdir()  # as if a run had been killed while replacing out

        code, stdout, err = run_cli(capsys, *args)
        assert code == 2
        assert err.strip().splitlines() == [
            f"easi3r: error: {out}: another easi3r run (pid {first.pid} on {socket.gethostname()}) "
            "is writing this output folder"
        ]
        assert "wrote" not in stdout
        assert (partial / "half.bin").is_file()  # the live run's staging folder is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
    assert beside(work) == [".out.lock", ".out.old-abcd1234", partial.name]

    # the killed run's lock is stale (the system dropped it), its staging folder goes, with one line each
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert f"easi3r: removed a stale partial output {partial.name} (left by an interrupted run)" in err
    assert "easi3r: removed a stale replaced output .out.old-abcd1234 (left by an interrupted run)" in err
    assert stdout.startswith(f"easi3r: wrote {out}")
    assert beside(work) == ["out"]


def test_a_shared_run_cache_is_locked(capsys, tmp_path):
    cache, out = tmp_path / "shared.cache", tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom easi3r.outputs import hold_lock\n"
            "with hold_lock(sys.argv[1], 'using this run cache'):\n"
            "    print('held', flush=True)\n    sys.stdin.read()",
            str(cache),
        ],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        code, _, err = run_cli(
            capsys, *frames(2), "-r", "tiny", "-o", str(out), "--cache", str(cache), *STREAM
        )
    finally:
        holder.communicate("")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"easi3r: error: {cache}: another easi3r run (pid {holder.pid} on {socket.gethostname()}) "
        "is using this run cache"
    )
    assert beside(tmp_path) == []  # the holder removed its lock; this run left nothing either


def test_lock_refuses_in_process_and_is_removed_after(tmp_path):
    target = tmp_path / "new" / "out"
    with hold_lock(target, "writing this output folder"):
        assert (tmp_path / "new" / ".out.lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        refused = pytest.raises(Easi3RError, match=r"another easi3r run \(pid \d+ on .+\) is writing")
        with refused, hold_lock(target, "writing this output folder"):
            pass
    assert beside(tmp_path) == []  # the lock file and the folder it needed are gone


# --- failures after staging began -------------------------------------------------------------------


@pytest.mark.parametrize("failure", [RuntimeError("exporter bug"), KeyboardInterrupt()])
def test_a_failure_while_writing_leaves_nothing(capsys, monkeypatch, tmp_path, failure):
    from easi3r import writers

    out = tmp_path / "new" / "out"  # its parent folder does not exist either
    real, written = writers.write_png, []

    def write_png(path, array):
        if len(written) == 3:
            raise failure
        written.append(real(path, array))
        return written[-1]

    monkeypatch.setattr(writers, "write_png", write_png)
    argv = ["run", *frames(2), "-r", "tiny", "-o", str(out), *QUICK]
    if isinstance(failure, KeyboardInterrupt):
        assert main(argv) == 130
        assert capsys.readouterr().err.strip().splitlines()[-1] == "easi3r: interrupted"
    else:
        with pytest.raises(RuntimeError, match="exporter bug"):
            main(argv)
    assert ".partial-" in str(written[0])  # the failure came after the staging folder was written into
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == []  # no OUT, no .partial, no .lock, no parent folder


# --- a full disk ------------------------------------------------------------------------------------


class FullDisk:
    """Writes into ``folder`` fail as on a full disk: the first ``files_ok`` files opened for writing are
    written whole, then 64 more bytes fit, then every write raises ``OSError(ENOSPC)`` (no file name,
    as a real one). Files are opened through ``open``/``io.open``, as Python writers (PIL, numpy,
    pathlib, ours) do."""

    def __init__(self, monkeypatch, folder: Path, files_ok: int) -> None:
        self.folder, self.files_ok, self.opened = str(folder), files_ok, 0
        self.space: int | None = None  # bytes left once the disk is filling
        self.failed: str | None = None  # the first file a write failed in
        self.real_open = io.open
        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(io, "open", self.open)

    def open(
        self,
        file,
        mode="r",
        buffering=-1,
        encoding=None,
        errors=None,
        newline=None,
        closefd=True,
        opener=None,
    ):
        path = os.path.abspath(file) if isinstance(file, (str, os.PathLike)) else ""
        if not path.startswith(self.folder + os.sep) or not set(mode) & set("wax+") or opener is not None:
            return self.real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        self.opened += 1
        if self.opened > self.files_ok and self.space is None:
            self.space = 64
        raw = _FillingFile(path, mode.replace("b", "").replace("t", ""))
        raw.disk = self
        buffered = io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, newline=newline)


class _FillingFile(io.FileIO):
    disk: FullDisk

    def write(self, data) -> int:
        disk = self.disk
        size = memoryview(data).nbytes
        if disk.space is None:
            return super().write(data)
        if disk.space == 0:
            disk.failed = disk.failed or self.name
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fits = min(size, disk.space)
        disk.space -= fits
        return super().write(memoryview(data).cast("B")[:fits])  # a short write, as a real disk does


def test_full_disk_while_writing_outputs(capsys, monkeypatch, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    disk = FullDisk(monkeypatch, work, files_ok=3)
    code, stdout, err = run_cli(capsys, *frames(2), "-r", "tiny", "-o", str(out), *QUICK)
    assert code == 2
    assert "wrote" not in stdout
    file = re.fullmatch(r".*/\.out\.partial-[^/]+/(.+)", disk.failed)[1]
    assert err.strip().splitlines()[-1] == (
        f"easi3r: error: {out}: no space left on the device while writing {file} "
        "(nothing was written; free some space and run again)"
    )
    assert beside(work) == []  # no OUT, no .partial-*, no .lock


def test_full_disk_while_writing_a_cache_chunk_then_resume(capsys, monkeypatch, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "out.cache"
    args = [*frames(3), "-r", "tiny", "-o", str(out), *QUICK, *STREAM]
    with monkeypatch.context() as patch:
        FullDisk(patch, cache, files_ok=2)  # the manifest and the first chunk
        code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"easi3r: error: {cache}: no space left on the device while writing pass1/000001-000001.safetensors "
        "(the finished chunks are kept; free some space and run again with --resume)"
    )
    assert beside(tmp_path) == ["out.cache"]  # no OUT, no .partial-*, no .lock
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) == [
        "manifest.json",
        "pass1/000000-000000.safetensors",
    ]  # the chunk being written is gone, no *.tmp-* left
    kept = (cache / "pass1" / "000000-000000.safetensors").stat()

    code, stdout, err = run_cli(capsys, *args, "--resume", "--keep-cache")
    assert code == 0, err
    assert "corrupt" not in err
    assert stdout.startswith(f"easi3r: wrote {out}")
    assert (cache / "pass1" / "000000-000000.safetensors").stat().st_mtime_ns == kept.st_mtime_ns


# --- damaged cache chunks ---------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    # timings.json holds the run's times, which differ from run to run
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "timings.json"
    }


def test_corrupt_cache_chunks_are_recomputed_on_resume(capsys, tmp_path, one_thread):
    out, cache = tmp_path / "out", tmp_path / "out.cache"
    args = [*frames(3), "-r", "tiny", "-o", str(out), *QUICK, *STREAM, "--keep-cache"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    expected_outputs, expected_cache = _files(out), _files(cache)

    flipped = cache / "pass1" / "000001-000001.safetensors"
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's last byte
    flipped.write_bytes(bytes(data))
    truncated = cache / "pass2" / "000002-000002.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])

    code, _, err = run_cli(capsys, *args, "--resume", "--overwrite")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert (
        "easi3r: cache chunk pass1/000001-000001.safetensors is corrupt (checksum mismatch); recomputing it"
        in lines
    )
    assert (
        "easi3r: cache chunk pass2/000002-000002.safetensors is corrupt (unreadable); recomputing it" in lines
    )
    assert sum(" is corrupt " in line for line in lines) == 2, lines
    assert _files(out) == expected_outputs
    assert _files(cache) == expected_cache  # recomputed to the same bytes
