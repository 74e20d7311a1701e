"""Window-wise alignment: the window ranges, the inputs of one window, exact chaining of moved windows,
recovery of a synthetic trajectory through the real aligner, and the store / ``only`` hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easi3r.errors import GeometryError
from easi3r.eval import metrics
from easi3r.geometry import Scene, make_pose, quat_to_rotmat, transform_points
from easi3r.pairs import make_pairs
from easi3r.strategies.global_align import GlobalAlign
from easi3r.synthetic import make_scene, pair_predictions
from easi3r.types import DynamicMasks, Frames, PairOutputs, PairPredictions
from easi3r.windows import align_in_windows, alignment_windows, stitch, window_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


# --- window ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_frames", "window", "overlap", "expected"),
    [
        (5, 8, 3, [(0, 5)]),
        (8, 8, 3, [(0, 8)]),
        (13, 8, 3, [(0, 8), (5, 13)]),
        (18, 8, 3, [(0, 8), (5, 13), (10, 18)]),
        (20, 8, 3, [(0, 8), (5, 13), (10, 18), (12, 20)]),  # the last one moved back: shares 6
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (7, 3, 2, [(0, 3), (1, 4), (2, 5), (3, 6), (4, 7)]),
    ],
)
def test_alignment_windows(n_frames, window, overlap, expected):
    assert alignment_windows(n_frames, window, overlap) == expected


@pytest.mark.parametrize(
    ("window", "overlap", "message"),
    [(8, 1, "at least 2 frames"), (8, 8, "smaller than the window"), (2, 1, "at least 3 frames")],
)
def test_alignment_windows_errors(window, overlap, message):
    with pytest.raises(GeometryError, match=message):
        alignment_windows(20, window, overlap)


# --- the inputs of one window ------------------------------------------------------------------------


def _frames(n_frames: int, size: tuple[int, int] = (2, 3)) -> Frames:
    return Frames(torch.zeros(n_frames, 3, *size), [f"f{i}" for i in range(n_frames)], [(3, 2)] * n_frames)


def test_window_inputs_reindex_pairs_and_select_their_predictions():
    n_frames = 10
    pairs = make_pairs("swinstride-5-noncyclic", n_frames)
    preds = PairPredictions(*(torch.randn(len(pairs), 2, 3, *tail) for tail in ((3,), (), (3,), ())))
    masks = DynamicMasks(
        torch.rand(n_frames, 2, 3) > 0.5, torch.rand(n_frames, 1, 1), torch.rand(n_frames, 1, 1), 0.4
    )
    frames, outputs, sub_masks = window_inputs(
        _frames(n_frames), PairOutputs(pairs, None, preds), masks, 3, 8
    )

    assert frames.indices == [3, 4, 5, 6, 7] and frames.paths == ["f3", "f4", "f5", "f6", "f7"]
    kept = [p for p, (i, j) in enumerate(pairs.tolist()) if 3 <= i < 8 and 3 <= j < 8]
    assert outputs.pairs.tolist() == [[i - 3, j - 3] for i, j in pairs[kept].tolist()]
    assert outputs.pairs.tolist()[:3] == [[0, 1], [0, 3], [1, 2]]  # original order kept
    for name in ("pts3d_1", "conf_1", "pts3d_2", "conf_2"):
        assert torch.equal(getattr(outputs.predictions, name), getattr(preds, name)[kept])
    assert outputs.attention is None
    assert torch.equal(sub_masks.masks, masks.masks[3:8])
    assert torch.equal(sub_masks.refined_map, masks.refined_map[3:8])
    assert sub_masks.threshold == 0.4 and sub_masks.maps is None and sub_masks.extras == {}


def test_window_without_pairs_for_a_frame_names_it():
    pairs = make_pairs("oneref-0", 8)  # every pair has frame 0 as view 1
    outputs = PairOutputs(pairs, None, None)
    with pytest.raises(GeometryError, match=r"frame 4 .*\[4, 7\).* larger scale.align_window"):
        window_inputs(_frames(8), outputs, None, 4, 7)
    # a window of a window names the frame by its place in the whole video
    with pytest.raises(GeometryError, match=r"frame 6 "):
        window_inputs(_frames(10).window(2, 10), outputs, None, 4, 7)


# --- stitching ---------------------------------------------------------------------------------------


def _random_similarity(gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """(4×4 similarity with the scale in the 3×3 block, scale), far from the identity in every part."""
    rot = quat_to_rotmat(torch.randn(4, generator=gen, dtype=torch.float64))
    log_scale = torch.empty(1, dtype=torch.float64).uniform_(0.3, 0.7, generator=gen)
    sign = 1 if torch.rand(1, generator=gen) < 0.5 else -1
    scale = float((sign * log_scale).exp())
    return make_pose(rot, 5 * torch.randn(3, generator=gen, dtype=torch.float64), scale), scale


def _moved(scene: Scene, sim: torch.Tensor, scale: float) -> Scene:
    """The same scene in another world: every camera, depth and point moved by the similarity."""
    rot = sim[:3, :3] / scale
    cam2world = scene.cam2world.double()
    poses = make_pose(rot @ cam2world[:, :3, :3], transform_points(sim, cam2world[:, :3, 3]))
    return Scene(
        cam2world=poses.to(scene.cam2world.dtype),
        intrinsics=scene.intrinsics,
        depth=scene.depth * scale,
        conf=scene.conf,
        pts3d=transform_points(sim, scene.pts3d.double()).to(scene.pts3d.dtype),
        conf_is_log=scene.conf_is_log,
    )


def _window_scene(scene: Scene, start: int, end: int) -> Scene:
    return Scene(
        cam2world=scene.cam2world[start:end],
        intrinsics=scene.intrinsics[start:end],
        depth=scene.depth[start:end],
        conf=scene.conf[start:end],
        pts3d=scene.pts3d[start:end],
        conf_is_log=scene.conf_is_log,
    )


@pytest.fixture(scope="module")
def truth() -> Scene:
    """A float64 ground truth, so that the comparison measures the chaining, not float32 rounding."""
    scene = make_scene(n_frames=12, size=(6, 8), n_objects=1, seed=3)
    return Scene(
        cam2world=scene.cam2world.double(),
        intrinsics=scene.intrinsics,
        depth=scene.depth.double(),
        conf=torch.rand(scene.depth.shape) + 1,
        pts3d=scene.pts3d.double(),
        conf_is_log=True,
    )


def test_stitch_recovers_the_scene_up_to_window_0s_similarity(truth):
    gen = torch.Generator().manual_seed(0)
    windows = alignment_windows(len(truth), 5, 2)
    assert windows == [(0, 5), (3, 8), (6, 11), (7, 12)]
    moves = [_random_similarity(gen) for _ in windows]
    scenes = [_moved(_window_scene(truth, s, e), *move) for (s, e), move in zip(windows, moves)]
    masks = torch.rand(len(truth), 6, 8) > 0.5

    stitched = stitch(scenes, windows, masks)

    expected = _moved(truth, *moves[0])
    torch.testing.assert_close(stitched.cam2world, expected.cam2world, atol=1e-5, rtol=0)
    torch.testing.assert_close(stitched.depth, expected.depth, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(stitched.pts3d, expected.pts3d, atol=1e-5, rtol=1e-6)
    assert torch.equal(stitched.intrinsics, truth.intrinsics) and torch.equal(stitched.conf, truth.conf)
    assert torch.equal(stitched.masks, masks) and stitched.conf_is_log
    rot = stitched.cam2world[:, :3, :3].double()
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64), atol=1e-6)


def test_stitch_rejects_windows_that_share_too_little(truth):
    scenes = [_window_scene(truth, 0, 5), _window_scene(truth, 4, 9)]
    with pytest.raises(GeometryError, match=r"window 1 .* shares 1 frame"):
        stitch(scenes, [(0, 5), (4, 9)])
    with pytest.raises(GeometryError, match="one scene per window"):
        stitch(scenes, [(0, 5)])


# --- the real aligner on a synthetic video -----------------------------------------------------------


@pytest.fixture(scope="module")
def video():
    n_frames = 18
    scene = make_scene(n_frames=n_frames, size=(36, 64), n_objects=2, seed=0)
    pairs = make_pairs("swinstride-5-noncyclic", n_frames)
    outputs = PairOutputs(pairs, None, pair_predictions(scene, pairs, seed=0))
    frames = Frames(scene.images(), [f"f{i}" for i in range(n_frames)])
    masks = DynamicMasks(
        scene.masks, torch.zeros(n_frames, 3, 4), torch.zeros(n_frames, 3, 4), 0.5
    )  # only ``masks`` matters to the aligner
    return scene, frames, outputs, masks


@pytest.mark.slow
def test_windowed_alignment_recovers_the_trajectory(video):
    scene, frames, outputs, masks = video
    aligner = GlobalAlign(iters=100)
    windowed = align_in_windows(aligner, frames, outputs, masks, window=8, overlap=3)
    whole = aligner(frames, outputs, masks)
    ate = metrics.ate(windowed.cam2world, scene.cam2world) / scene.extent
    ate_all = metrics.ate(whole.cam2world, scene.cam2world) / scene.extent
    # one scale for the whole video: the depth ratio to the truth is the same in every window
    ratio = (windowed.depth / scene.depth).flatten(1).median(1).values
    spread = float(ratio.max() / ratio.min() - 1)
    print(f"\nATE / room: windows {ate:.1e}, all frames {ate_all:.1e}; depth-scale spread {spread:.1e}")
    assert ate <= 3e-3
    assert spread <= 1e-2
    assert torch.equal(windowed.masks, scene.masks) and len(windowed) == len(frames)


def test_known_per_frame_values_are_sliced_to_the_window(video, tmp_path):
    scene, frames, outputs, _ = video
    K = scene.intrinsics.clone()
    K[:, :2, :2] *= torch.linspace(0.9, 1.1, len(K))[:, None, None]  # per frame, so that a wrong row shows
    path = tmp_path / "K.txt"
    np.savetxt(path, K.reshape(-1, 9).numpy())
    # default stale-edge quirk on: it must not hand a frame another frame's known focal
    aligner = GlobalAlign(iters=0, known_intrinsics=str(path))
    aligner.known_poses = scene.cam2world
    sub = aligner(*window_inputs(frames, outputs, None, 5, 13))
    assert torch.allclose(sub.intrinsics, K[5:13])
    assert torch.allclose(sub.cam2world, scene.cam2world[5:13], atol=1e-6)


# --- store and ``only`` ------------------------------------------------------------------------------


class DictStore:
    def __init__(self) -> None:
        self.scenes: dict[int, Scene] = {}

    def load(self, k: int) -> Scene | None:
        return self.scenes.get(k)

    def save(self, k: int, scene: Scene) -> None:
        self.scenes[k] = scene


class CountingAligner:
    """Returns the ground truth of the window it is given, moved to a world of its own."""

    def __init__(self, scene: Scene) -> None:
        self.scene, self.calls = scene, []

    def __call__(self, frames, pair_outputs, masks, progress_bar=None) -> Scene:
        start, end = frames.indices[0], frames.indices[-1] + 1
        self.calls.append(start)
        gen = torch.Generator().manual_seed(start)
        return _moved(_window_scene(self.scene, start, end), *_random_similarity(gen))


def test_store_skips_aligned_windows_and_only_picks_windows(video):
    scene, frames, outputs, masks = video
    truth = scene.to_scene()
    aligner = CountingAligner(truth)
    store = DictStore()
    first = align_in_windows(aligner, frames, outputs, masks, window=8, overlap=3, store=store)
    assert aligner.calls == [0, 5, 10] and sorted(store.scenes) == [0, 1, 2]
    again = align_in_windows(aligner, frames, outputs, masks, window=8, overlap=3, store=store)
    assert aligner.calls == [0, 5, 10]  # nothing aligned twice
    torch.testing.assert_close(again.cam2world, first.cam2world)
    assert metrics.ate(first.cam2world, truth.cam2world) < 1e-5

    # two "ranks" sharing one store align their shares and get no scene; rank 0 then chains from the store
    aligner, store = CountingAligner(truth), DictStore()
    for rank in (1, 0):
        share = align_in_windows(
            aligner,
            frames,
            outputs,
            masks,
            window=8,
            overlap=3,
            store=store,
            only=lambda k, r=rank: k % 2 == r,
        )
        assert share is None
    assert aligner.calls == [5, 0, 10] and sorted(store.scenes) == [0, 1, 2]
    chained = align_in_windows(aligner, frames, outputs, masks, window=8, overlap=3, store=store)
    assert aligner.calls == [5, 0, 10]
    torch.testing.assert_close(chained.cam2world, first.cam2world)
