"""The 4D viewer: reading a run's scene, and a real headless Chromium looking at ``easi3r view``."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from easi3r.cli import main
from easi3r.errors import Easi3RError
from easi3r.synthetic import SyntheticScene, make_scene
from easi3r.viewer import SCENE_FILE, load_scene_for_viewing, select_points

CHROMIUM = Path("/usr/bin/chromium")


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
    selected = select_points(data, max_points_per_frame=100, min_conf=1.0)
    assert all(len(s.static) == 100 for s in selected)
    assert (selected[0].static >= 12 * 32).all()
    for i, s in enumerate(selected):
        assert not data.masks[i].reshape(-1)[s.static].any()
        assert data.masks[i].reshape(-1)[s.dynamic].all()
        assert len(s.dynamic) == min(100, int((data.masks[i] & (data.conf[i] >= 1.0)).sum()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_url(server: subprocess.Popen, log: Path, timeout: float) -> str:
    """The URL the server printed (viser moves to the next port when ours was taken meanwhile), once its
    HTTP port answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"easi3r view exited with {server.returncode}:\n{log.read_text()}")
        found = re.search(r"http://127\.0\.0\.1:\d+", log.read_text())
        if found:
            try:
                with urllib.request.urlopen(found.group(0), timeout=2) as response:
                    if response.status == 200:
                        return found.group(0)
            except OSError:
                pass
        time.sleep(0.2)
    pytest.fail(f"easi3r view did not serve within {timeout} s:\n{log.read_text()}")


def _colour_keys(colours: np.ndarray) -> np.ndarray:
    c = colours.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


@pytest.mark.slow
def test_browser_renders_points_and_cameras(tmp_path: Path) -> None:
    pytest.importorskip("viser")
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (Debian packages chromium and chromium-driver)")
    from PIL import Image

    synthetic = write_scene(tmp_path / "run")
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "easi3r.cli", "view", str(tmp_path / "run"), "--port", str(_free_port())]
    # the synthetic scene's confidence is 1 everywhere: keep every point
    command += ["--min-conf", "0"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_url(server, log, timeout=30)
        shot = tmp_path / "shot.png"
        subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",  # WebGL then runs on SwiftShader, which is what is being tested
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--window-size=1024,768",
                "--virtual-time-budget=15000",  # lets the websocket deliver the scene before the shot
                f"--screenshot={shot}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        server.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert server.wait(timeout=15) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    scene_area = np.ones(pixels.shape[:2], bool)
    scene_area[:370, 680:] = False  # the control panel, top right
    scene_area[:160, :320] = False  # viser's "software WebGL" notice, top left
    px = pixels[scene_area].astype(np.int64)
    # points are drawn flat, so a rendered point has exactly its pixel's colour: a page whose WebGL
    # failed (or that never received the scene) has none of them
    static_colours = synthetic.rgb.mul(255).round().byte().numpy()[~synthetic.masks.numpy()]
    point_pixels = np.isin(_colour_keys(px), _colour_keys(static_colours)).sum()
    assert point_pixels > 2000, f"only {point_pixels} pixels show a point's colour"
    # the frusta are drawn shaded, so match them loosely: grey lines for all cameras (the scene has no
    # grey), orange for the current one
    spread = px.max(-1) - px.min(-1)
    grey = ((spread <= 4) & (px.max(-1) > 60) & (px.max(-1) < 200)).sum()
    orange = ((px[:, 0] > 200) & (px[:, 1] > 120) & (px[:, 1] < 220) & (px[:, 2] < 100)).sum()
    assert grey > 300 and orange > 300, f"cameras not drawn: {grey} grey and {orange} orange pixels"
