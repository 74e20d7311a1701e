"""The recipe strategy of the ``global`` aligner (:class:`GlobalAlign`): reads the known-camera files,
computes the optical flow of the flow prior, drives the progress bar and calls
:func:`~.optimise.global_align`."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import torch
from torch import Tensor

from easi3r.contracts import FlowModel
from easi3r.errors import GeometryError, PluginError, RecipeError, one_line
from easi3r.geometry import Scene
from easi3r.plugins import registry, schema_fragments
from easi3r.types import PairOutputs, PairPredictions

from .config import AlignConfig
from .flow_loss import PairFlows, compute_pair_flows
from .optimise import Alignment, Progress, global_align

__all__ = ["DEFAULT_FLOW_MODEL", "SEA_RAFT_WEIGHTS", "GlobalAlign", "check_flow_model", "predictions_of"]

logger = logging.getLogger(__name__)

# the weights the reference's flow prior uses (optimizer.py:132)
SEA_RAFT_WEIGHTS = "Tartan-C-T-TSKH-spring540x960-M.pth"
DEFAULT_FLOW_MODEL: dict[str, Any] = {"name": "sea_raft", "checkpoint": None}


class GlobalAlign:
    """Recipe strategy ``align: {name: global, **AlignConfig fields, known_intrinsics, known_poses,
    flow_model}``.

    ``known_intrinsics`` is a text file with one row-major 3×3 matrix (9 numbers) shared by all frames or
    one per frame; ``known_poses`` a camera-to-world trajectory in TUM order (``t x y z qx qy qz qw``), one
    line per frame. Both are held fixed. ``flow_model`` (``{name, **params}``, default SEA-RAFT) is the
    registered flow model (``easi3r_flow_models``) of MonST3R's flow prior, built on first use and only when
    ``flow_loss_weight > 0``; it computes the flows of every alignment from the frames, once. Called by the
    pipeline as ``align(frames, pair_outputs, masks, progress_bar)``, where ``progress_bar`` is
    :func:`easi3r.progress.progress_bar` (or None).
    """

    def __init__(
        self,
        known_intrinsics: str | None = None,
        known_poses: str | None = None,
        flow_model: dict[str, Any] | None = None,
        **params,
    ) -> None:
        self.config = AlignConfig(**params)
        self.flow_model_section = dict(flow_model or DEFAULT_FLOW_MODEL)
        check_flow_model(self.flow_model_section, self.config.flow_loss_weight)
        self.known_intrinsics = None if known_intrinsics is None else _read_intrinsics(known_intrinsics)
        self.known_poses = None if known_poses is None else _read_poses(known_poses)
        self._flow_model: FlowModel | None = None
        self._announced = False

    def __call__(self, frames, pair_outputs, masks, progress_bar=None) -> Scene:
        preds = predictions_of(pair_outputs)
        mask_tensor = masks.masks if masks is not None else None
        if progress_bar is None:
            return self._align(frames, pair_outputs, preds, mask_tensor, None).scene
        with progress_bar(total=self.config.iters, desc="alignment", unit="it") as bar:

            def report(step: int, total: int, loss: float) -> None:
                bar.update(1)
                bar.set_postfix_str(f"loss={loss:.4g}")

            return self._align(frames, pair_outputs, preds, mask_tensor, report).scene

    def _align(self, frames, pair_outputs, preds, masks, report: Progress | None) -> Alignment:
        flows = self._flows(frames, pair_outputs.pairs)
        if flows is not None and masks is None:
            logger.info("align: no dynamic masks; the flow loss uses every pixel")
        intrinsics, poses = self.known_intrinsics, self.known_poses
        if frames.indices is not None:
            # the frames are a window of a longer video: per-frame known values are the whole video's
            if intrinsics is not None and intrinsics.ndim == 3 and len(intrinsics) > len(frames):
                intrinsics = intrinsics[frames.indices]
            if poses is not None and len(poses) > len(frames):
                poses = poses[frames.indices]
        return global_align(
            preds,
            pair_outputs.pairs,
            len(frames),
            frames.size,
            config=self.config,
            masks=masks,
            known_intrinsics=intrinsics,
            known_poses=poses,
            flows=flows,
            progress=report,
        )

    def _flows(self, frames, pairs: Tensor) -> PairFlows | None:
        """The flows of the pairs (both directions) when the flow prior is on, else None; says once which."""
        weight, name = self.config.flow_loss_weight, self.flow_model_section.get("name")
        if not self._announced:
            self._announced = True
            if weight > 0:
                start = self.config.iters * self.config.flow_loss_start_epoch
                logger.info(
                    "align: optical-flow prior of flow model '%s' (align.flow_loss_weight=%g, from step %g)",
                    name,
                    weight,
                    start,
                )
            else:
                logger.info("align: no optical-flow prior (align.flow_loss_weight=0)")
        if weight <= 0:
            return None
        if self._flow_model is None:
            section = _without_null_checkpoint(self.flow_model_section)
            self._flow_model = registry("flow_models").create(section, key="align.flow_model")
        return compute_pair_flows(self._flow_model, frames.images, pairs, name=f"flow model '{name}'")


def check_flow_model(flow_model: dict[str, Any] | None, weight: float) -> None:
    """Refuse a flow prior that cannot run, in one line naming the key: with ``weight > 0``, SEA-RAFT without
    its weights, a flow model that is not registered, or parameters its schema fragment ``flow_model/<name>``
    (or, without one, its factory) does not take. Called for a recipe before any frame or weight is read
    (``easi3r_check_recipe``) and again when the strategy is built."""
    if weight <= 0:
        return
    params = dict(flow_model or DEFAULT_FLOW_MODEL)
    name = params.pop("name", None)
    if name == "sea_raft" and not params.get("checkpoint"):
        raise RecipeError(
            f"recipe key 'align.flow_model.checkpoint' is not set, but align.flow_loss_weight={weight:g} "
            f"needs SEA-RAFT's weights: set it to the path of {SEA_RAFT_WEIGHTS} (or the weight to 0)"
        )
    try:
        factory = registry("flow_models").get(str(name))
    except PluginError as exc:
        raise RecipeError(f"recipe key 'align.flow_model.name': {exc}") from None
    fragment = schema_fragments().get(f"flow_model/{name}")
    if fragment is not None:
        extra = sorted(set(params) - set(fragment.get("properties", {})))
        if extra:
            allowed = ", ".join(fragment.get("properties", {}))
            raise RecipeError(
                f"recipe key 'align.flow_model.{extra[0]}' is not a parameter of flow model '{name}'; "
                f"allowed: {allowed}"
            )
        error = next(iter(jsonschema.Draft202012Validator(fragment).iter_errors(params)), None)
        if error is not None:
            where = ".".join(["align.flow_model", *map(str, error.absolute_path)])
            raise RecipeError(f"recipe key '{where}': {one_line(error.message)}")
    else:
        try:
            inspect.signature(factory).bind(**_without_null_checkpoint(params))
        except TypeError as exc:
            raise RecipeError(f"recipe key 'align.flow_model': flow model '{name}' {exc}") from None
    checkpoint = params.get("checkpoint")
    if name == "sea_raft" and checkpoint != "random" and not Path(str(checkpoint)).is_file():
        raise RecipeError(
            f"recipe key 'align.flow_model.checkpoint': no such file {checkpoint} (SEA-RAFT's weights, "
            f"{SEA_RAFT_WEIGHTS})"
        )


def _without_null_checkpoint(section: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint: null`` means "no weights file": a flow model without weights need not take the key."""
    return {k: v for k, v in section.items() if not (k == "checkpoint" and v is None)}


def _read_intrinsics(path: str) -> Tensor:
    """(3, 3) or (T, 3, 3) from a text file of 9 numbers per row."""
    try:
        values = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise GeometryError(f"known intrinsics {path}: cannot read ({one_line(exc)})") from None
    if values.shape[1] != 9:
        raise GeometryError(
            f"known intrinsics {path}: expected 9 numbers per row (a 3×3 matrix), got {values.shape[1]}"
        )
    matrices = torch.from_numpy(values).float().reshape(-1, 3, 3)
    return matrices[0] if len(matrices) == 1 else matrices


def _read_poses(path: str) -> Tensor:
    """(T, 4, 4) camera-to-world poses from a TUM trajectory file."""
    from easi3r.trajectory_io import read_tum

    _, cam2world = read_tum(path)
    return torch.from_numpy(cam2world).float()


def predictions_of(pair_outputs: PairOutputs) -> PairPredictions:
    """The pair predictions in memory (a streamed pass is read from its cache here: with
    ``scale.align_window`` the pipeline hands each window only its own pairs)."""
    preds = pair_outputs.predictions
    if preds is None:
        raise GeometryError("alignment needs the pair predictions: run pass 2 with the heads on")
    return preds if isinstance(preds, PairPredictions) else preds.select(torch.arange(len(preds)))
