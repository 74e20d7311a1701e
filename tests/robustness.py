"""Bad input, tried as a careless or hostile user would: every case must end in one clean line.

Each :class:`Case` is a command line (with files its ``setup`` writes into a scratch folder) that must
fail with exit status 2 and exactly one error line on standard error (``easi3r: error: …``, the last
line, naming what is wrong), no traceback, no output folder or hidden staging folder left behind, and
within a time limit. ``tests/test_robustness.py`` runs every case in-process; this script runs each one
as a real ``easi3r`` process (where a crash or a hang would show) and writes ``docs/robustness.md``::

    python tests/robustness.py                     # prints a line per case, then "N tried, N clean"
    python tests/robustness.py --write docs/robustness.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRAMES = HERE / "data" / "frames"
TIME_LIMIT = 60.0  # seconds for one case, as a real process (the slowest run a few frames of the tiny model)


Setup = Callable[[Path], Callable[[], None] | None]  # writes files; may return what undoes it afterwards


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    argv: tuple[str, ...]  # {tmp}: the case's scratch folder; {frames}: the bundled test frames
    expect: str  # text the error line must contain (code 2), or a line standard error must have (code 0)
    setup: Setup | None = None
    code: int = 2  # 0: a case the run recovers from by itself, saying so
    leaves: tuple[str, ...] = ()  # what a recovered run leaves (its output folder)

    def command(self, tmp: Path) -> list[str]:
        return _fill(self.argv, tmp)


def _fill(argv: tuple[str, ...], tmp: Path) -> list[str]:
    return [arg.replace("{tmp}", str(tmp)).replace("{frames}", str(FRAMES)) for arg in argv]


@dataclass
class Outcome:
    code: int | None  # None: killed at the time limit
    stderr: str
    seconds: float
    leftovers: list[str]  # files in the scratch folder that setup did not write

    @property
    def error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def problems(self, case: Case) -> list[str]:
        """Why the outcome is not clean; empty when it is."""
        found = []
        if self.code != case.code:
            found.append(f"exit status {self.code}")
        if "Traceback" in self.stderr:
            found.append("traceback")
        errors = [line for line in self.stderr.splitlines() if line.startswith("easi3r: error:")]
        if case.code == 0:
            if errors or not any(case.expect in line for line in self.stderr.splitlines()):
                found.append(f"no line saying {case.expect!r}")
        elif len(errors) != 1 or errors[0] != self.error_line:
            found.append(f"{len(errors)} error lines, last line {self.error_line[:80]!r}")
        elif case.expect not in self.error_line:
            found.append(f"error line lacks {case.expect!r}")
        left = [name for name in self.leftovers if name.split("/")[0] not in case.leaves]
        if left:
            found.append(f"left behind: {', '.join(left[:5])}")
        if self.seconds > TIME_LIMIT:
            found.append(f"took {self.seconds:.0f} s")
        return found


GOLDEN_MODEL = json.loads((HERE / "data" / "golden" / "net" / "info.json").read_text())["model"]
GOLDEN_CONFIG = {  # the golden network's constructor as a hub folder's config.json holds it
    **dict(pos_embed="RoPE100", patch_embed_cls="ManyAR_PatchEmbed", img_size=[512, 512], head_type="linear"),
    **dict(output_mode="pts3d", depth_mode=["exp", -math.inf, math.inf], conf_mode=["exp", 1, math.inf]),
    **dict(enc_embed_dim=128, enc_depth=3, enc_num_heads=2, dec_embed_dim=96, dec_depth=3, dec_num_heads=3),
}


def golden_weights() -> dict:
    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(HERE / "data" / "golden" / "net" / "weights.pth", weights_only=True)["model"]


def _hub(config: str | None = None, **changes: object) -> Callable[[Path], None]:
    """A hub folder ``ckpt/``: the golden weights, and as config.json the text ``config`` or else the
    golden config with ``changes``."""

    def setup(tmp: Path) -> None:
        from safetensors.torch import save_file

        (tmp / "ckpt").mkdir()
        text = config if config is not None else json.dumps({**GOLDEN_CONFIG, **changes})
        (tmp / "ckpt" / "config.json").write_text(text)
        save_file(golden_weights(), tmp / "ckpt" / "model.safetensors")

    return setup


def _pth(model: str = GOLDEN_MODEL, dtype: str | None = None) -> Callable[[Path], None]:
    """``ckpt.pth`` as the official checkpoints are laid out: ``args.model`` (a constructor string) and
    ``model`` (the golden weights, optionally cast to ``dtype``)."""

    def setup(tmp: Path) -> None:
        import torch

        weights = golden_weights()
        if dtype is not None:
            weights = {k: v.to(getattr(torch, dtype)) for k, v in weights.items()}
        torch.save({"args": argparse.Namespace(model=model), "model": weights}, tmp / "ckpt.pth")

    return setup


def _truncated(tmp: Path) -> None:
    data = (HERE / "data" / "golden" / "net" / "weights.pth").read_bytes()
    (tmp / "ckpt.pth").write_bytes(data[: len(data) // 2])


def _vggt_checkpoint(tmp: Path) -> None:
    """``model.safetensors`` of the tiny VGGT preset, laid out as facebook/VGGT-1B's."""
    from safetensors.torch import save_file

    from easi3r.backends.vggt.checkpoint import load_vggt

    save_file(load_vggt(None, "tiny").state_dict(), tmp / "model.safetensors")


def _symlink_loop(tmp: Path) -> None:
    (tmp / "ckpt").symlink_to(tmp / "ckpt")


def _locked(name: str, doing: str) -> Setup:
    """Another run holds the lock of ``name`` (the lock is released when the case is over)."""

    def setup(tmp: Path) -> Callable[[], None]:
        from easi3r.outputs import hold_lock

        held = hold_lock(tmp / name, doing)
        held.__enter__()
        return lambda: held.__exit__(None, None, None)

    return setup


def _stale_staging(tmp: Path) -> None:
    """What a run killed while writing its outputs leaves: a hidden staging folder beside OUT."""
    (tmp / ".out.partial-k1ll3d").mkdir()
    (tmp / ".out.partial-k1ll3d" / "masks.png").write_bytes(b"\0" * 1000)


def _flipped_cache(tmp: Path) -> None:
    """The cache of a streaming run, one byte of a chunk flipped, as a resumed run finds it."""
    from easi3r import cli

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(_fill((*RUN_STREAM[:-1], "--keep-cache"), tmp)) == 0
    shutil.rmtree(tmp / "out")
    chunk = sorted((tmp / "out.cache" / "pass1").glob("*.safetensors"))[0]
    data = bytearray(chunk.read_bytes())
    data[-5] ^= 0xFF
    chunk.write_bytes(bytes(data))


# a 16×16 binary mask PNG (all static)
_MASK_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000100000001008000000003a98a0bd0000000e4944415478da6360"
    "1805a360140000031000010a6f9a5c0000000049454e44ae426082"
)


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


# a run that would succeed in seconds on the bundled tiny model, were it not for the case's one mistake
RUN = ("run", "{frames}", "-o", "{tmp}/out", "--recipe", "tiny", "frames.max_frames=3")

RUN_STREAM = (*RUN, "scale.stream=true", "scale.chunk_pairs=8", "--resume")
CONVERT = ("convert", "{tmp}/ckpt.pth", "{tmp}/converted")
RUN_HUB = (*RUN, "--checkpoint", "{tmp}/ckpt")
RUN_PTH = (*RUN, "--checkpoint", "{tmp}/ckpt.pth")
DEEP = GOLDEN_MODEL.replace("enc_depth=3", "enc_depth=1000000000")

CASES: list[Case] = [
    # --- checkpoints -------------------------------------------------------------------------------
    Case(
        "checkpoints",
        "config.json enc_depth: 1e9 (hung)",
        RUN_HUB,
        "would have about 2e+14 parameters",
        _hub(enc_depth=10**9),
    ),
    Case(
        "checkpoints",
        ".pth args.model enc_depth=1e9 (run)",
        RUN_PTH,
        "would have about 2e+14 parameters",
        _pth(DEEP),
    ),
    Case(
        "checkpoints",
        ".pth args.model enc_depth=1e9 (convert)",
        CONVERT,
        "would have about 2e+14 parameters",
        _pth(DEEP),
    ),
    Case(
        "checkpoints",
        "enc_num_heads: 0",
        RUN_HUB,
        "enc_num_heads must be a positive integer, got 0",
        _hub(enc_num_heads=0),
    ),
    Case(
        "checkpoints",
        "enc_embed_dim: -128",
        RUN_HUB,
        "enc_embed_dim must be a positive integer, got -128",
        _hub(enc_embed_dim=-128),
    ),
    Case(
        "checkpoints",
        "config.json of 100,000 '['",
        RUN_HUB,
        "its JSON is nested too deeply",
        _hub("[" * 100_000),
    ),
    Case(
        "checkpoints",
        "pos_embed: RoPE0 (convert)",
        CONVERT,
        "pos_embed must be 'RoPE<base>'",
        _pth(GOLDEN_MODEL.replace("RoPE100", "RoPE0")),
    ),
    Case(
        "checkpoints", "img_size: 'abc'", RUN_HUB, "img_size must be a positive integer", _hub(img_size="abc")
    ),
    Case(
        "checkpoints",
        "img_size: [1e6, 1e6]",
        RUN_HUB,
        "at most 4096, got (1000000.0, 1000000.0)",
        _hub(img_size=[1e6, 1e6]),
    ),
    Case(
        "checkpoints",
        "int32 weights (convert)",
        CONVERT,
        "holds int32 values; weights must be float32",
        _pth(dtype="int32"),
    ),
    Case(
        "checkpoints",
        "int32 weights (run)",
        RUN_PTH,
        "holds int32 values; weights must be float32",
        _pth(dtype="int32"),
    ),
    Case(
        "checkpoints",
        "truncated .pth",
        RUN_PTH,
        "is truncated or corrupt: its zip directory is missing",
        _truncated,
    ),
    Case("checkpoints", "symbolic link loop", RUN_HUB, "symbolic link loop", _symlink_loop),
    Case("checkpoints", "missing file", (*RUN, "--checkpoint", "{tmp}/nope.pth"), "no such file or folder"),
    Case(
        "checkpoints",
        "VGGT weights, DUSt3R recipe",
        (*RUN, "--checkpoint", "{tmp}/model.safetensors"),
        "recipe 'tiny', backbone 'dust3r': checkpoint",
        _vggt_checkpoint,
    ),
    Case(
        "checkpoints",
        "DUSt3R weights, VGGT recipe",
        ("run", "{frames}", "-o", "{tmp}/out", "--recipe", "vggt4d_tiny", "--checkpoint", "{tmp}/ckpt.pth"),
        "recipe 'vggt4d_tiny', backbone 'vggt': checkpoint",
        _pth(),
    ),
    Case(
        "checkpoints",
        "VGGT-1B without weights",
        ("run", "{frames}", "-o", "{tmp}/out", "--recipe", "vggt4d"),
        "backbone preset 'vggt_1b' needs its weights",
    ),
    # --- formulas ----------------------------------------------------------------------------------
    Case(
        "formulas",
        "misspelt name, unclosed",
        ("validate", "tiny", "rule.formula=frame_minmax(src_maen"),
        "formula error at column",
    ),
    Case("formulas", "0/0", ("validate", "tiny", "rule.formula=0/0"), "reads no map"),
    Case("formulas", "minmax(1)", ("validate", "tiny", "rule.formula=minmax(1)"), "reads no map"),
    Case(
        "formulas",
        "src_mean/0",
        ("validate", "tiny", "rule.formula=src_mean/0"),
        "division by zero gives inf or nan",
    ),
    Case(
        "formulas",
        "exp(1e308*src_mean)",
        ("validate", "tiny", "rule.formula=exp(1e308*src_mean)"),
        "it is inf in float32",
    ),
    Case(
        "formulas",
        "log(src_std - 0.5)",
        ("validate", "tiny", "rule.formula='log(src_std - 0.5)'"),
        "gives nan on sample maps",
    ),
    Case(
        "formulas",
        "__import__('os')",
        ("validate", "tiny", "rule.formula=__import__('os')"),
        "formula error at column",
    ),
    Case(
        "formulas",
        "finite on samples, -inf on the video (after pass 1)",
        (*RUN, "frames.max_frames=2", "rule.formula='log(mean_channels(src_std_raw))'"),
        "gives -inf on this video's maps",
    ),
    # --- nothing left behind ------------------------------------------------------------------------
    Case(
        "nothing left behind",
        "a second run into the same output folder",
        RUN,
        "another easi3r run (pid",
        _locked("out", "writing this output folder"),
    ),
    Case(
        "nothing left behind",
        "a second run on the same run cache",
        (*RUN[:3], "{tmp}/other", *RUN[4:], "--cache", "{tmp}/shared.cache", "scale.stream=true"),
        "is using this run cache",
        _locked("shared.cache", "using this run cache"),
    ),
    Case(
        "nothing left behind",
        "the staging folder of a run killed while writing",
        RUN,
        "removed a stale partial output .out.partial-k1ll3d",
        _stale_staging,
        code=0,
        leaves=("out",),
    ),
    Case(
        "nothing left behind",
        "a flipped byte in a cache chunk, then --resume",
        RUN_STREAM,
        "is corrupt (checksum mismatch); recomputing it",
        _flipped_cache,
        code=0,
        leaves=("out",),
    ),
    Case(
        "nothing left behind",
        "--cache is a file",
        (*RUN, "--cache", "{tmp}/file", "scale.stream=true"),
        "the run cache path exists and is not a folder",
        _write("file", "x"),
    ),
    # --- calibration ---------------------------------------------------------------------------------
    Case(
        "calibration",
        "calibrate with no frames",
        ("calibrate", "-o", "{tmp}/out", "--recipe", "tiny"),
        "give either SOURCE --masks GT_DIR",
    ),
    Case(
        "calibration",
        "calibrate without --masks",
        ("calibrate", "{frames}", "-o", "{tmp}/out", "--recipe", "tiny"),
        "--masks GT_DIR is needed",
    ),
    Case(
        "calibration",
        "fewer masks than frames",
        ("calibrate", "{frames}", "--masks", "{tmp}/m", "-o", "{tmp}/out", "--recipe", "tiny"),
        "1 masks for the 12 frames",
        _write("m/0.png", _MASK_PNG),
    ),
    Case("calibration", "synth --frames 1", ("synth", "-o", "{tmp}/out", "--frames", "1"), "frames"),
    Case("calibration", "synth --size 0x5", ("synth", "-o", "{tmp}/out", "--size", "0x5"), "size"),
    # --- the command line --------------------------------------------------------------------------
    Case("command line", "unknown command", ("nosuch",), "invalid choice: 'nosuch'"),
    Case("command line", "--device tpu", (*RUN, "--device", "tpu"), "argument --device: invalid choice"),
    Case(
        "command line",
        "run without -o",
        ("run", "{frames}"),
        "the following arguments are required: --out/-o",
    ),
    Case(
        "command line",
        "recipe file without sections",
        (*RUN[:5], "{tmp}/r.yaml"),
        "recipe key 'backbone' is required",
        _write("r.yaml", ""),
    ),
    Case(
        "command line",
        "output path is a file",
        (*RUN[:3], "{tmp}/file", *RUN[4:]),
        "output path exists and is not a folder",
        _write("file", "x"),
    ),
    # --- recipes -----------------------------------------------------------------------------------
    Case(
        "recipes",
        "recipe with non-UTF-8 bytes",
        ("validate", "{tmp}/r.yaml"),
        "not UTF-8 text",
        _write("r.yaml", b"extends: tiny\nrule:\n  formula: '\xff\xfe'\n"),
    ),
    Case(
        "recipes",
        "malformed interpolation in a recipe",
        ("validate", "{tmp}/r.yaml"),
        "key 'refine.k'",
        _write("r.yaml", "extends: tiny\nrefine:\n  k: ${oops\n"),
    ),
    Case(
        "recipes",
        "malformed interpolation in an override",
        ("validate", "tiny", "refine.k=${oops"),
        "cannot read the value of override",
    ),
    Case(
        "recipes",
        "extends an absolute path",
        ("validate", "{tmp}/r.yaml"),
        "'extends' must be a recipe name or a relative path",
        _write("r.yaml", "extends: /etc/passwd\n"),
    ),
    Case(
        "recipes",
        "extends a relative path that is no recipe file",
        ("validate", "{tmp}/r.yaml"),
        "'extends' must be a recipe name or a relative path",
        _write("r.yaml", "extends: ../../../etc/passwd\n"),
    ),
    Case(
        "recipes",
        "recipe file of 2 MB",
        ("validate", "{tmp}/r.yaml"),
        "too large for a recipe",
        _write("r.yaml", "a" * 2_000_000),
    ),
    Case(
        "recipes",
        "brackets nested 100,000 deep (crashed YAML's reader)",
        ("validate", "{tmp}/r.yaml"),
        "brackets nested 100000 deep",
        _write("r.yaml", "a: " + "[" * 100_000 + "\n"),
    ),
    Case(
        "recipes",
        "override nested 5,000 deep",
        ("validate", "tiny", "refine.k=" + "[" * 5000 + "]" * 5000),
        "brackets nested 5000 deep",
    ),
    Case(
        "recipes",
        "align.lr=.nan",
        ("validate", "tiny", "align.lr=.nan"),
        "'align.lr' must be a finite number",
    ),
    Case(
        "recipes",
        "align.lr=.inf",
        ("validate", "tiny", "align.lr=.inf"),
        "'align.lr' must be a finite number",
    ),
    Case("recipes", "align.lr=-1", ("validate", "tiny", "align.lr=-1"), "'align.lr' must be > 0"),
    Case("recipes", "frames.size=100000000", (*RUN, "frames.size=100000000"), "frames.size=100000000 makes"),
    Case("recipes", "reweight.layers=[9999]", (*RUN, "reweight.layers=[9999]"), "decoder layers 0 to 2"),
    Case("recipes", "unknown recipe name", ("validate", "no_such_recipe"), "unknown recipe 'no_such_recipe'"),
    # --- devices and ports -------------------------------------------------------------------------
    Case("devices and ports", "--device cuda", (*RUN, "--device", "cuda"), "backbone.device: 'cuda'"),
    Case("devices and ports", "--device mps", (*RUN, "--device", "mps"), "backbone.device: 'mps'"),
    Case(
        "devices and ports", "view --port 99999", ("view", "{tmp}/out", "--port", "99999"), "--port must be"
    ),
    Case(
        "devices and ports",
        "view --host 999.1.1.1 (hung)",
        ("view", "{tmp}/out", "--host", "999.1.1.1"),
        "--host 999.1.1.1: cannot serve",
    ),
]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_case(case: Case, scratch: Path, runner: Callable[[list[str]], tuple[int | None, str]]) -> Outcome:
    """Set the case up in ``scratch`` (an empty folder), run it with ``runner`` and see what is left."""
    undo = case.setup(scratch) if case.setup is not None else None
    try:
        before = _files(scratch)
        start = time.perf_counter()
        code, stderr = runner(case.command(scratch))
        seconds = time.perf_counter() - start
        # the report shows the placeholders, not this machine's folders
        stderr = stderr.replace(str(scratch), "{tmp}").replace(str(FRAMES), "{frames}")
        return Outcome(code, stderr, seconds, sorted(_files(scratch) - before))
    finally:
        if undo is not None:
            undo()


def in_subprocess(argv: list[str]) -> tuple[int | None, str]:
    env = dict(os.environ, EASI3R_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "easi3r", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIME_LIMIT * 2,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr or ""
        return None, stderr if isinstance(stderr, str) else stderr.decode(errors="replace")
    return proc.returncode, proc.stderr


def _markdown(results: list[tuple[Case, Outcome]]) -> str:
    clean = sum(not outcome.problems(case) for case, outcome in results)
    lines = [
        "# Robustness: bad input, one line each",
        "",
        "Generated by `python tests/robustness.py --write docs/robustness.md`, which runs every case below as",
        "a real `easi3r` process. A case is clean when it exits with status 2, prints exactly one error line",
        "(the last line of standard error) containing the expected text, shows no traceback, leaves no file",
        f"behind (no output folder, no hidden staging folder) and ends within {TIME_LIMIT:.0f} s.",
        "`tests/test_robustness.py` runs the same cases in-process on every test run.",
        "",
        f"**{len(results)} tried, {clean} clean.**",
        "",
    ]
    group = None
    for case, outcome in results:
        if case.group != group:
            group = case.group
            lines += ["", f"## {group[0].upper()}{group[1:]}", "", "| case | s | message |", "|---|---:|---|"]
        problems = outcome.problems(case)
        message = outcome.error_line
        if case.code == 0 and not problems:  # a recovery: show the line that says what was done
            message = next(line for line in outcome.stderr.splitlines() if case.expect in line)
        message = message.replace("|", "\\|")
        verdict = "" if not problems else f" **NOT CLEAN: {'; '.join(problems)}**"
        lines.append(f"| {case.name} | {outcome.seconds:.1f} | `{message}`{verdict} |")
    lines += ["", *_PROVOKED_BY_TESTS]
    return "\n".join(lines) + "\n"


# cases a command line cannot provoke on demand: tests/test_outputs.py makes them happen in-process
_PROVOKED_BY_TESTS = [
    "## Provoked by the tests only",
    "",
    "A full disk and a kill in mid-write cannot be caused from a command line on demand;",
    "`tests/test_outputs.py` causes them (writes that fail with `ENOSPC` after a given number of files; a real",
    "`easi3r run` process held in its writing step and killed with `kill -9`) and checks these lines and that",
    "nothing is left behind:",
    "",
    "| case | message |",
    "|---|---|",
    "| disk full while writing the outputs | `easi3r: error: OUT: no space left on the device while writing "
    "masks/enlarged_dynamic_mask_0000.png (nothing was written; free some space and run again)` |",
    "| disk full while writing the run cache | `easi3r: error: CACHE: no space left on the device while writing "
    "pass1/000001-000001.safetensors (the finished chunks are kept; free some space and run again with "
    "--resume)`; the resumed run then completes |",
    "| the next run after a `kill -9` in mid-write | `easi3r: removed a stale partial output .OUT.partial-XXXX "
    "(left by an interrupted run)`, while a live run's staging folder is never touched |",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="easi3r-robustness-") as root:

        def one(indexed: tuple[int, Case]) -> Outcome:
            scratch = Path(root) / f"case{indexed[0]:03d}"
            scratch.mkdir()
            return run_case(indexed[1], scratch, in_subprocess)

        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(one, enumerate(CASES)))
    results = list(zip(CASES, outcomes))
    for case, outcome in results:
        problems = outcome.problems(case)
        print(
            f"{'clean' if not problems else 'NOT CLEAN'}  {case.group}: {case.name}: {'; '.join(problems) or outcome.error_line}"
        )
    clean = sum(not outcome.problems(case) for case, outcome in results)
    print(f"{len(results)} tried, {clean} clean")
    if args.write is not None:
        args.write.write_text(_markdown(results))
    return 0 if clean == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
