"""The 4D viewer: reading a run's scene, and a real headless Chromium looking at ``easi3r view``."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from safetensors.numpy import save_file

from easi3r.cli import main
from easi3r.errors import Easi3RError
from easi3r.synthetic import SyntheticScene, make_scene
from easi3r.viewer import SCENE_FILE, load_scene_for_viewing, select_points

CHROMIUM = Path("/usr/bin/chromium")  # Debian packages chromium and chromium-driver
CHROMEDRIVER = Path("/usr/bin/chromedriver")
T = TypeVar("T")


def write_scene(out_dir: Path, drop: tuple[str, ...] = (), **scene_args) -> SyntheticScene:
    """Write ``scene/scene.safetensors`` the way a run with an aligner does (docs/outputs.md), plus ``rgb``."""
    synthetic = make_scene(**({"n_frames": 4, "size": (24, 32)} | scene_args))
    scene = synthetic.to_scene()
    arrays = {
        "cam2world": scene.cam2world,
        "intrinsics": scene.intrinsics,
        "depth": scene.depth,
        "conf": scene.conf,
        "pts3d": scene.pts3d,
        "masks": scene.masks,
        "focals": scene.focals,
        "rgb": (synthetic.rgb * 255).round().byte(),
    }
    path = out_dir / SCENE_FILE
    path.parent.mkdir(parents=True)
    frames = json.dumps([f"frames/{i:04d}.png" for i in range(len(synthetic))])
    save_file(
        {key: value.numpy() for key, value in arrays.items() if key not in drop},
        str(path),
        metadata={"frames": frames},
    )
    return synthetic


def test_load_reads_every_array(tmp_path: Path) -> None:
    synthetic = write_scene(tmp_path)
    data = load_scene_for_viewing(tmp_path)
    assert len(data) == 4 and data.frames[1] == "frames/0001.png"
    assert data.pts3d.shape == (4, 24, 32, 3) and data.rgb.dtype == np.uint8
    np.testing.assert_array_equal(data.masks, synthetic.masks.numpy())
    np.testing.assert_allclose(data.cam2world, synthetic.cam2world.numpy())


def test_load_without_colours_or_masks_shows_grey_static_points(tmp_path: Path) -> None:
    write_scene(tmp_path, drop=("rgb", "masks"))
    data = load_scene_for_viewing(tmp_path)
    assert (data.rgb == 160).all() and not data.masks.any()


def test_missing_scene_is_one_line_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scene/scene.safetensors" in err and "align.name=global" in err


def test_view_refuses_no_points_per_frame(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_scene(tmp_path)
    assert main(["view", str(tmp_path), "--max-points-per-frame", "0"]) == 2
    assert "--max-points-per-frame must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("drop", "message"), [(("pts3d",), "no pts3d"), (("cam2world", "conf"), "no cam2world, conf")]
)
def test_incomplete_scene_names_the_missing_keys(tmp_path: Path, drop: tuple[str, ...], message: str) -> None:
    write_scene(tmp_path, drop=drop)
    with pytest.raises(Easi3RError, match=message):
        load_scene_for_viewing(tmp_path)


def test_select_points_filters_by_confidence_and_subsamples(tmp_path: Path) -> None:
    write_scene(tmp_path)
    data = load_scene_for_viewing(tmp_path)
    data.conf[0, :12] = 0.5  # the top half of frame 0 is unsure
    selected = select_points(data, max_points_per_frame=100, min_conf=0.75)
    assert all(len(s.static) == 100 for s in selected)
    assert (selected[0].static >= 12 * 32).all()
    for i, s in enumerate(selected):
        assert not data.masks[i].reshape(-1)[s.static].any()
        assert data.masks[i].reshape(-1)[s.dynamic].all()
        assert len(s.dynamic) == min(100, int((data.masks[i] & (data.conf[i] > 0.75)).sum()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _poll(attempt: Callable[[], T | None], timeout: float, what: str) -> T:
    """The first result of ``attempt`` that is not None, trying every 0.25 s for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = attempt()
        if result is not None:
            return result
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout} s")


class WebDriver:
    """The few W3C WebDriver commands this test needs, sent to chromedriver over HTTP (no Selenium)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def ready(self) -> bool | None:
        try:
            return self.call("GET", "/status")["ready"] or None
        except OSError:  # not listening yet
            return None

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        png = base64.b64decode(self.command("GET", "/screenshot"))
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def click(self, xpath: str) -> None:
        element = self.command("POST", "/element", {"using": "xpath", "value": xpath})
        self.command("POST", f"/element/{next(iter(element.values()))}/click", {})

    def quit(self) -> None:
        if self.session:
            self.command("DELETE", "")
            self.session = ""

    def input_values(self) -> list[str]:
        script = "return Array.from(document.querySelectorAll('input'), input => input.value)"
        return self.command("POST", "/execute/sync", {"script": script, "args": []})


@contextmanager
def headless_chromium(profile: Path, window: tuple[int, int] = (1024, 768)) -> Iterator[WebDriver]:
    """Headless Chromium driven through chromedriver, its profile in ``profile``; skips the test where
    Debian's chromium and chromium-driver are missing."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            pytest.skip(f"no {program} (Debian packages chromium and chromium-driver)")
    port = _free_port()
    # a process group of its own, so that teardown can end the browser too (chromedriver leaves it
    # running when it is itself ended)
    driver_process = subprocess.Popen(
        [str(CHROMEDRIVER), f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    driver = WebDriver(port)
    try:
        _poll(driver.ready, 20, "chromedriver did not start")
        args = [
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",  # WebGL then runs on SwiftShader, which is what is being tested
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
        ]
        options = {"binary": str(CHROMIUM), "args": args}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
        driver.session = driver.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})[
            "sessionId"
        ]
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            os.killpg(driver_process.pid, signal.SIGTERM)
            driver_process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    pytest.importorskip("viser")
    with headless_chromium(tmp_path / "chromium") as driver:
        yield driver


@contextmanager
def serving(out_dir: Path, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """``easi3r view out_dir`` in a subprocess, and its URL once its HTTP port answers; stopped with
    Ctrl-C's signal."""
    # the synthetic scene's confidence is 1 everywhere: --min-conf 0 keeps every point
    command = [sys.executable, "-m", "easi3r.cli", "view", str(out_dir), "--min-conf", "0"]
    command += ["--port", str(_free_port())]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def url() -> str | None:
        if server.poll() is not None:
            pytest.fail(f"easi3r view exited with {server.returncode}:\n{log.read_text()}")
        # the printed URL, since viser moves to the next port when ours was taken meanwhile
        found = re.search(r"http://127\.0\.0\.1:\d+", log.read_text())
        if found is None:
            return None
        try:
            with urllib.request.urlopen(found.group(0), timeout=2):
                return found.group(0)
        except OSError:
            return None

    try:
        yield server, _poll(url, 30, "easi3r view did not serve")
        server.send_signal(signal.SIGINT)
        server.wait(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _colour_keys(colours: np.ndarray) -> np.ndarray:
    c = colours.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def _drawn(pixels: np.ndarray, synthetic: SyntheticScene) -> dict[str, int]:
    """How many pixels of a screenshot show static points, cameras and the current camera."""
    height, width = pixels.shape[:2]
    scene_area = np.ones((height, width), bool)
    scene_area[:370, width - 340 :] = False  # the control panel, top right
    scene_area[:160, :320] = False  # viser's "software WebGL" notice, top left, with an orange bar
    px = pixels[scene_area].astype(np.int64)
    # points are drawn flat, so a rendered point has exactly its pixel's colour: a page whose WebGL
    # failed (or that never received the scene) has none of them
    static_colours = synthetic.rgb.mul(255).round().byte().numpy()[~synthetic.masks.numpy()]
    # the frusta are shaded, so they are matched loosely: grey lines for all cameras (the synthetic scene
    # has no grey), orange for the current one
    spread = px.max(-1) - px.min(-1)
    return {
        "points": int(np.isin(_colour_keys(px), _colour_keys(static_colours)).sum()),
        "cameras": int(((spread <= 4) & (px.max(-1) > 60) & (px.max(-1) < 200)).sum()),
        "current camera": int(
            ((px[:, 0] > 200) & (px[:, 1] > 120) & (px[:, 1] < 220) & (px[:, 2] < 100)).sum()
        ),
    }


@pytest.mark.slow
def test_browser_shows_points_and_cameras_and_plays(tmp_path: Path, browser: WebDriver) -> None:
    from PIL import Image

    synthetic = write_scene(tmp_path / "run")
    minimum = {"points": 2000, "cameras": 300, "current camera": 300}
    counts: dict[str, int] = {}

    def rendered() -> np.ndarray | None:
        pixels = browser.screenshot()
        counts.update(_drawn(pixels, synthetic))
        return pixels if all(counts[key] > minimum[key] for key in minimum) else None

    with serving(tmp_path / "run", tmp_path / "server.log") as (server, url):
        browser.command("POST", "/url", {"url": url})
        # the websocket connects and SwiftShader draws a little after the page loads: look until it has
        try:
            pixels = _poll(rendered, 30, "the scene was not drawn")
        finally:
            print(f"pixels drawn: {counts}")
        Image.fromarray(pixels).save(tmp_path / "viewer.png")  # kept by pytest for a person to look at
        assert "frames/0000.png" in browser.input_values()
        browser.click("//button[contains(., 'Play')]")
        _poll(lambda: "frames/0002.png" in browser.input_values() or None, 20, "Play did not advance")
        # close the browser first: with a page connected, viser waits seconds for its websocket to close
        browser.quit()
    assert server.returncode == 0, (tmp_path / "server.log").read_text()
