"""The global alignment itself (:func:`global_align`): checks, initialisation, then Adam (β = 0.9, 0.9)
on the :class:`~.model.GlobalAligner` loss, the learning rate decayed linearly (or by cosine) from ``lr``
to ``lr_min``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from easi3r.errors import GeometryError
from easi3r.geometry import Scene
from easi3r.types import PairPredictions

from .checks import check_geometry, check_inputs, check_known_poses, split_known_intrinsics
from .config import AlignConfig
from .flow_loss import PairFlows
from .init import init_mst, random_state
from .model import GlobalAligner
from .state import AlignState

__all__ = ["Alignment", "Progress", "global_align"]

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass
class Alignment:
    """What :func:`global_align` returns."""

    scene: Scene
    loss_history: list[float]  # loss before each step
    lr_history: list[float]  # learning rate of each step
    init: AlignState
    final: AlignState
    # the flow prior's unweighted loss at each step, NaN where it is off (:mod:`.flow_loss`)
    flow_loss_history: list[float] = field(default_factory=list)


def global_align(
    preds: PairPredictions,
    pairs: Tensor,
    n_frames: int,
    image_size: tuple[int, int] | None = None,
    *,
    config: AlignConfig | None = None,
    masks: Tensor | None = None,
    known_intrinsics: Tensor | None = None,
    known_poses: Tensor | None = None,
    init_state: AlignState | None = None,
    flows: PairFlows | None = None,
    extra_loss: Callable[[GlobalAligner], Tensor] | None = None,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> Alignment:
    """Align ordered pair predictions (view-1 frame points) into one scene.

    ``masks`` (T, H, W) bool are the dynamic masks: carried into the scene, and used by the 3D term only
    with ``config.exclude_dynamic``. ``known_intrinsics`` ((3, 3) or (T, 3, 3); focal = mean of fx, fy, and
    the principal point) and ``known_poses`` ((T, 4, 4) camera-to-world) are held fixed; with known poses
    the pair scales are not normalised. ``init_state`` replaces the initialisation (warm start).
    ``flows`` are the optical flows of the pairs, both directions, which MonST3R's flow prior needs when
    ``config.flow_loss_weight > 0`` (:mod:`.flow_loss`). ``extra_loss(aligner)`` is added to the loss each
    step (``aligner.iteration`` is the step).
    ``progress(step, iters, loss)`` is called after each step. The initialisation runs on the CPU (OpenCV);
    the optimisation on ``device`` (default CPU); results come back on the CPU. Raises GeometryError on
    unusable input.
    """
    config = config or AlignConfig()
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    check_inputs(preds, pairs, n_frames, image_size, masks)
    focals, pp = split_known_intrinsics(known_intrinsics, n_frames)
    known_poses = check_known_poses(known_poses, n_frames)
    static = ~masks if masks is not None and config.exclude_dynamic else None
    w1, w2 = preds.conf_1.log().clamp(min=0), preds.conf_2.log().clamp(min=0)
    if static is not None:
        w1, w2 = w1 * static[pairs[:, 0]], w2 * static[pairs[:, 1]]
    check_geometry(preds, pairs, n_frames, w1, w2)
    del w1, w2  # 2·P·H·W floats, only for the check: the aligner keeps its own weights
    im_conf = preds.frame_confidence(pairs, n_frames)

    if init_state is None:
        if config.init == "mst":
            init_state = init_mst(
                preds,
                pairs,
                n_frames,
                config,
                im_conf=im_conf,
                static=static,
                known_focals=focals,
                known_pp=pp,
                known_poses=known_poses,
            )
        else:
            init_state = random_state(preds, pairs, n_frames, config, focals, pp, known_poses)
    elif known_poses is not None or focals is not None:
        init_state = AlignState(
            known_poses if known_poses is not None else init_state.cam2world,
            focals if focals is not None else init_state.focals,
            init_state.depth,
            init_state.pair_poses,
            pp if pp is not None else init_state.principal_points,
        )
    aligner = GlobalAligner(
        preds,
        pairs,
        n_frames,
        init_state,
        config,
        masks=masks,
        known_focals=focals is not None,
        known_pp=pp is not None,
        known_poses=known_poses is not None,
        flows=flows,
    ).to(device)
    start = aligner.state()
    losses, lrs, flow_losses = _optimise(aligner, extra_loss, progress)
    aligner.cpu()
    start = start.to("cpu")
    final = aligner.state()
    if not all(bool(torch.isfinite(x).all()) for x in (final.cam2world, final.focals, final.depth)):
        raise GeometryError(
            "global alignment diverged (non-finite poses or depth): the pair predictions are degenerate; "
            "check the checkpoint, or skip alignment with align.name=none"
        )
    height, width = aligner.size
    scene = Scene(
        cam2world=final.cam2world,
        intrinsics=aligner.intrinsics().detach(),
        depth=final.depth,
        conf=im_conf,
        pts3d=aligner.world_points().detach().view(n_frames, height, width, 3),
        masks=masks,
    )
    return Alignment(scene, losses, lrs, start, final, flow_losses)


def _learning_rate(config: AlignConfig, step: int) -> float:
    t = step / config.iters
    if config.schedule == "cosine":
        return config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(t * math.pi)) / 2
    return config.lr + (config.lr_min - config.lr) * t


def _optimise(
    aligner: GlobalAligner,
    extra_loss: Callable[[GlobalAligner], Tensor] | None,
    progress: Progress | None,
) -> tuple[list[float], list[float], list[float]]:
    config = aligner.config
    params = [p for p in aligner.parameters() if p.requires_grad]
    losses: list[float] = []
    lrs: list[float] = []
    flow_losses: list[float] = []
    if not params:
        return losses, lrs, flow_losses
    optimiser = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.9))
    for step in range(config.iters):
        lr = _learning_rate(config, step)
        for group in optimiser.param_groups:
            group["lr"] = lr
        aligner.iteration = step
        optimiser.zero_grad()
        loss = aligner()
        if extra_loss is not None:
            loss = loss + extra_loss(aligner)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        lrs.append(lr)
        flow_losses.append(aligner.flow_loss_value)
        if progress is not None:
            progress(step + 1, config.iters, losses[-1])
    return losses, lrs, flow_losses
