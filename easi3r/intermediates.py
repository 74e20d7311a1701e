"""``intermediates.safetensors``: every intermediate value of a run, for studying attention and for
checking parity from outside.

Key names follow the reference's variable names (``docs/outputs.md`` lists them), so a run can be
compared with the reference key by key: ``passK/...`` for K = 1, 2.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor

from easi3r.pipeline import RunResult
from easi3r.types import DynamicMasks, FrameSetOutputs, PairOutputs, PassOutputs

FRAME_SET_KEYS = ("cam2world", "intrinsics", "depth", "depth_conf", "pts3d", "pts3d_conf")

# our map names → the reference's (i = decoder 1 / source side, j = decoder 2 / reference side, "var" = std)
MAP_KEYS = {
    "src_mean": "cross_att_k_i_mean",
    "src_std": "cross_att_k_i_var",
    "ref_mean": "cross_att_k_j_mean",
    "ref_std": "cross_att_k_j_var",
}


def _pass_tensors(prefix: str, outputs: PassOutputs, masks: DynamicMasks | None, n_frames: int) -> dict:
    if isinstance(outputs, FrameSetOutputs):
        return _frame_set_tensors(prefix, outputs) | _mask_tensors(prefix, masks, reference_names=False)
    return _pair_tensors(prefix, outputs, n_frames) | _mask_tensors(prefix, masks, reference_names=True)


def _frame_set_tensors(prefix: str, outputs: FrameSetOutputs) -> dict[str, Tensor]:
    """A frame-set pass: its windows and each window's predictions (``passK/windowW/...``)."""
    out: dict[str, Tensor] = {f"{prefix}/windows": outputs.windows}
    for k, prediction in enumerate(outputs.predictions or ()):
        out |= {f"{prefix}/window{k}/{name}": getattr(prediction, name) for name in FRAME_SET_KEYS}
    return out


def _pair_tensors(prefix: str, outputs: PairOutputs, n_frames: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {
        f"{prefix}/view1_idx": outputs.pairs[:, 0],
        f"{prefix}/view2_idx": outputs.pairs[:, 1],
    }
    if outputs.predictions is not None:
        # a streamed pass is read back whole: intermediates are for inspecting short runs
        pred = outputs.predictions.select(torch.arange(len(outputs.pairs)))
        out |= {
            f"{prefix}/pred1_pts3d": pred.pts3d_1,
            f"{prefix}/pred1_conf": pred.conf_1,
            f"{prefix}/pred2_pts3d_in_other_view": pred.pts3d_2,
            f"{prefix}/pred2_conf": pred.conf_2,
            f"{prefix}/im_conf": pred.frame_confidence(outputs.pairs, n_frames),
        }
    if outputs.attention is not None:
        out[f"{prefix}/pred1_cross_atten_maps_k"] = outputs.attention.decoder1
        out[f"{prefix}/pred2_cross_atten_maps_k"] = outputs.attention.decoder2
    return out


def _mask_tensors(prefix: str, masks: DynamicMasks | None, reference_names: bool) -> dict[str, Tensor]:
    """The maps and masks of a pass: the four statistics under the reference's names (pairwise), or every
    named map as ``passK/maps/NAME`` (frame-set)."""
    out: dict[str, Tensor] = {}
    if masks is not None:
        if reference_names:
            for ours, theirs in MAP_KEYS.items():
                out[f"{prefix}/{theirs}_raw"] = masks.maps[f"{ours}_raw"]
                out[f"{prefix}/{theirs}_fused"] = masks.maps[ours]
        elif masks.maps is not None:
            out |= {f"{prefix}/maps/{name}": value for name, value in masks.maps.maps.items()}
        out |= {
            f"{prefix}/dynamic_map": masks.dynamic_map,
            f"{prefix}/refined_dynamic_map": masks.refined_map,
            f"{prefix}/upsampled_refined_dynamic_map": masks.extras["upsampled_refined_map"],
            f"{prefix}/otsu_threshold": torch.tensor([masks.threshold], dtype=torch.float64),
            f"{prefix}/dynamic_masks": masks.masks,
        }
        if "labels" in masks.extras:
            out[f"{prefix}/dynamic_map_labels"] = masks.extras["labels"]
    return out


def intermediates(result: RunResult) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All intermediate tensors of a run and the metadata to store with them."""
    frames = result.frames
    n = len(frames)
    tensors: dict[str, Tensor] = {
        "input/img": frames.images,
        "input/true_shape": torch.tensor([frames.size] * n, dtype=torch.int32),
        result.unit_name: result.pairs,
        # the encoder runs once per frame, so both passes share these features
        "pass1/stacked_feat": result.encoded.features().float().cpu(),
    }
    for name, pass_result in result.passes.items():
        tensors |= _pass_tensors(name, pass_result.outputs, pass_result.masks, n)
    if "pass2" in result.passes:
        tensors["pass2/atten_mask_input"] = result.passes["pass1"].masks.masks
    metadata = {"frames": json.dumps(frames.paths)}
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata
