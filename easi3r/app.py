"""``easi3r app``: a gradio page that runs a recipe on an uploaded video or frames and shows the outputs.

The page is a thin front end to :func:`easi3r.api.run`: the knobs become recipe overrides, each run writes
into a fresh folder under the app's work directory, and the results are read back from the files the
exporters wrote (docs/outputs.md), so the page shows exactly what ``easi3r run`` would have written.
gradio is an optional dependency (``pip install 'easi3r[app]'``): it is imported only when the app starts.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from omegaconf import OmegaConf

from easi3r.errors import Easi3RError, one_line

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["Knobs", "RunFiles", "build_app", "collect_results", "knob_overrides", "serve", "zip_folder"]

GRADIO_MISSING = "the app needs gradio: pip install 'easi3r[app]'"
RECIPE_DEFAULT = "(recipe default)"  # the threshold choice that leaves the recipe's own
MAX_GALLERY = 64  # images per gallery: a long video's every map would only slow the page; the zip has all
OUTPUT_NAME = "easi3r-output"  # the run folder's name, and so the top folder of the zip


class Knobs(NamedTuple):
    """What the page's controls say. An empty text, or an empty or 0 number, keeps the recipe's value,
    except ``max_frames``, where 0 (what gradio sends for an empty number) means all the frames."""

    checkpoint: str = ""
    graph: str = ""
    k: float | None = None
    threshold: str = ""
    max_frames: float | None = None
    stride: float | None = None


class RunFiles(NamedTuple):
    """The outputs of a finished run that the page shows."""

    video: Path | None  # overlays.mp4, when the recipe's exporters wrote it
    overlays: list[Path]  # overlays/*.png: the fallback when there is no video
    maps: list[Path]  # overview.png, then maps/<kind>/*.png
    scene: Path | None  # scene/scene.glb of the pointcloud exporter


def recipe_knobs(recipe: str) -> Knobs:
    """The recipe's own values of the knobs, to fill the controls with when it is chosen."""
    from easi3r.recipes import load_recipe

    cfg = load_recipe(recipe)
    return Knobs(
        graph=str(OmegaConf.select(cfg, "pairs.graph", default="") or ""),
        k=OmegaConf.select(cfg, "refine.k", default=None),
        threshold=str(OmegaConf.select(cfg, "threshold.name", default="") or ""),
        max_frames=OmegaConf.select(cfg, "frames.max_frames", default=None) or 0,
        stride=OmegaConf.select(cfg, "frames.stride", default=None),
    )


def knob_overrides(recipe: str, knobs: Knobs) -> list[str]:
    """The ``key=value`` overrides that make ``recipe`` say what the knobs say.

    Only knobs that differ from the recipe become overrides: a knob left alone never names a key that the
    recipe's strategy lacks, and the run's ``run.yaml`` records only what the user changed.
    """
    from easi3r.recipes import load_recipe

    cfg = load_recipe(recipe)
    overrides = []
    if knobs.checkpoint.strip():
        overrides.append(f"backbone.checkpoint={_yaml(knobs.checkpoint.strip())}")
    wanted: dict[str, Any] = {}
    if knobs.graph.strip():
        wanted["pairs.graph"] = knobs.graph.strip()
    if _whole(knobs.k, "k-means k"):
        wanted["refine.k"] = _whole(knobs.k, "k-means k")
    if knobs.threshold and knobs.threshold != RECIPE_DEFAULT:
        wanted["threshold.name"] = knobs.threshold
    if knobs.max_frames is not None:
        wanted["frames.max_frames"] = _whole(knobs.max_frames, "max frames") or None  # 0: all of them
    if _whole(knobs.stride, "stride"):
        wanted["frames.stride"] = _whole(knobs.stride, "stride")
    for key, value in wanted.items():
        if value != OmegaConf.select(cfg, key, default=None):
            overrides.append(f"{key}={_yaml(value)}")
    return overrides


def _whole(value: float | None, what: str) -> int | None:
    """A number control's value as an integer (gradio hands numbers over as floats)."""
    if value is None:
        return None
    if value != int(value):
        raise Easi3RError(f"{what} must be a whole number, got {value}")
    return int(value)


def _yaml(value: object) -> str:
    """``value`` as an override reads it: strings YAML-quoted (a path with ``: `` or ``#`` stays one
    string), None as null."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def sources_of(paths: Sequence[str | Path]) -> str | list[str]:
    """The run's source from the uploaded files: a video alone, or images in the order of their names."""
    if not paths:
        raise Easi3RError("no frames given: upload a video or several images first")
    if len(paths) == 1:
        return str(paths[0])
    return sorted((str(path) for path in paths), key=lambda path: Path(path).name)


def collect_results(out_dir: Path) -> RunFiles:
    """What :class:`RunFiles` finds in a run's output folder (any of it may be absent: recipes differ)."""
    video = out_dir / "overlays.mp4"
    scene = out_dir / "scene" / "scene.glb"
    overview = out_dir / "overview.png"
    maps = [overview] if overview.is_file() else []
    maps += sorted((out_dir / "maps").glob("*/*.png"))
    return RunFiles(
        video=video if video.is_file() else None,
        overlays=sorted((out_dir / "overlays").glob("*.png"))[:MAX_GALLERY],
        maps=maps[:MAX_GALLERY],
        scene=scene if scene.is_file() else None,
    )


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """``folder`` and everything in it as ``zip_path``, under a top folder of the same name."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, Path(folder.name) / path.relative_to(folder))
    return zip_path


class _LineQueue(io.TextIOBase):
    """A stream that puts each complete line written to it on a queue (and copies it to ``echo``)."""

    def __init__(self, lines: queue.Queue[str], echo: Any) -> None:
        self.lines, self.echo, self.partial = lines, echo, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.echo.write(text)
        self.partial += text
        *complete, self.partial = self.partial.split("\n")
        for line in complete:
            if line.strip():
                self.lines.put(line)
        return len(text)

    def flush(self) -> None:
        self.echo.flush()


def execute(
    source: str | list[str], recipe: str, overrides: Sequence[str], out_dir: Path
) -> Iterator[str | RunFiles]:
    """Run the recipe into ``out_dir``, yielding each log line as it comes, then the :class:`RunFiles`.

    The run's standard error is copied to the page: the command's log handler writes there, and off a
    terminal the progress bars become log lines (easi3r.progress). Standard error is the process's, so
    while a run goes anything else the app prints is copied too; the app runs one run at a time.
    """
    from easi3r.api import run

    lines: queue.Queue[str] = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run(source, recipe, out_dir, overrides)
        except BaseException as exc:  # handed to the page's thread, which raises it there
            failure.append(exc)

    with contextlib.redirect_stderr(_LineQueue(lines, sys.stderr)):
        worker = threading.Thread(target=work, name="easi3r-app-run", daemon=True)
        worker.start()
        while worker.is_alive() or not lines.empty():
            with contextlib.suppress(queue.Empty):
                yield lines.get(timeout=0.2)
    if failure:
        raise failure[0]
    yield collect_results(out_dir)


def build_app(work_dir: Path) -> gr.Blocks:
    """The page; each run writes into a fresh folder under ``work_dir``."""
    gr = _gradio()
    from easi3r.plugins import registry
    from easi3r.recipes import available_recipes

    recipes = list(available_recipes())
    first = "tiny" if "tiny" in recipes else recipes[0]
    start = _controls(first)
    with gr.Blocks(title="easi3r", analytics_enabled=False) as demo:
        gr.Markdown("# easi3r\nMoving objects from a 3D network's attention, and the 4D scene.")
        with gr.Row():
            with gr.Column(scale=1):
                uploads = gr.File(
                    label="video or frames (several images)",
                    file_count="multiple",
                    file_types=["video", "image"],
                    elem_id="uploads",
                )
                recipe = gr.Dropdown(recipes, value=first, label="recipe", elem_id="recipe")
                checkpoint = gr.Textbox(
                    label="checkpoint", placeholder="path or hub id; empty: the recipe's default"
                )
                with gr.Accordion("knobs", open=True):
                    graph = gr.Textbox(start[0], label="pair graph (pairs.graph)")
                    k = gr.Number(start[1], label="k-means clusters (refine.k; 0: the recipe's)", precision=0)
                    threshold = gr.Dropdown(
                        [RECIPE_DEFAULT, *registry("thresholds").names()],
                        value=start[2],
                        label="threshold (threshold.name)",
                    )
                    max_frames = gr.Number(start[3], label="max frames (0: all)", precision=0)
                    stride = gr.Number(start[4], label="frame stride", precision=0, minimum=1)
                button = gr.Button("Run", variant="primary", elem_id="run")
                outcome = gr.Markdown(elem_id="outcome")  # done or the error, in one line
                status = gr.Textbox(label="log", lines=8, max_lines=8, autoscroll=True, elem_id="status")
            with gr.Column(scale=2):
                video = gr.Video(label="overlays", visible=False, elem_id="overlay-video")
                overlays = gr.Gallery(label="overlays", visible=False, columns=4, elem_id="overlay-gallery")
                scene = gr.Model3D(label="3D scene", height=420, elem_id="scene")
                maps = gr.Gallery(label="attention maps", columns=4, elem_id="maps")
                download = gr.File(label="output folder (zip)", elem_id="download")

        knob_controls = [graph, k, threshold, max_frames, stride]
        recipe.change(_controls, recipe, knob_controls, api_name="recipe_knobs")

        def on_run(
            files: list[str] | None,
            name: str,
            checkpoint_path: str,
            pair_graph: str,
            clusters: float | None,
            threshold_name: str,
            frames_at_most: float | None,
            frame_stride: float | None,
        ) -> Iterator[dict[Any, Any]]:
            knobs = Knobs(checkpoint_path, pair_graph, clusters, threshold_name, frames_at_most, frame_stride)
            log: list[str] = []
            try:
                overrides = knob_overrides(name, knobs)
                source = sources_of(files or [])
                run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
                out_dir = run_dir / OUTPUT_NAME
                for item in execute(source, name, overrides, out_dir):
                    if isinstance(item, str):
                        log.append(item)
                        yield {status: "\n".join(log), outcome: "running"}
                    else:
                        yield _shown(item, zip_folder(out_dir, run_dir / f"{OUTPUT_NAME}.zip"))
            except Easi3RError as exc:
                yield {outcome: f"error: {one_line(exc)}"}

        def _shown(files: RunFiles, archive: Path) -> dict[Any, Any]:
            return {
                outcome: f"done: {archive.parent}",
                video: gr.update(value=files.video and str(files.video), visible=files.video is not None),
                overlays: gr.update(value=[str(p) for p in files.overlays], visible=files.video is None),
                scene: files.scene and str(files.scene),
                maps: [(str(p), _caption(p)) for p in files.maps],
                download: str(archive),
            }

        outputs = [outcome, status, video, overlays, scene, maps, download]
        button.click(on_run, [uploads, recipe, checkpoint, *knob_controls], outputs, api_name="run")
    return demo


def _caption(path: Path) -> str:
    """``overview``, or a map's kind and frame: ``dynamic_map 0003``."""
    return path.stem if path.name == "overview.png" else f"{path.parent.name} {path.stem}"


def _controls(recipe: str) -> list[Any]:
    """The knob controls' values for ``recipe`` (a recipe without a threshold shows the default choice)."""
    knobs = recipe_knobs(recipe)
    return [knobs.graph, knobs.k, knobs.threshold or RECIPE_DEFAULT, knobs.max_frames, knobs.stride]


def serve(host: str = "127.0.0.1", port: int = 7860, work_dir: Path | None = None) -> None:
    """Serve the page on ``http://host:port`` until Ctrl-C, one run at a time (the others wait)."""
    from easi3r.viewer import check_address

    check_address(host, port)
    _gradio()  # a missing gradio is told before any folder is made
    if work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="easi3r-app-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"easi3r app: runs go to {work_dir}", file=sys.stderr)
    demo = build_app(work_dir.resolve())
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(
            server_name=host, server_port=port, allowed_paths=[str(work_dir)], show_error=False, quiet=False
        )
    except OSError as exc:  # gradio's "Cannot find empty port": a busy port
        raise Easi3RError(f"--port {port}: {one_line(exc)}") from None


def _gradio() -> Any:
    # no usage statistics sent to gradio's servers from a local tool (and no wait where offline)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise Easi3RError(GRADIO_MISSING) from None
    return gradio
