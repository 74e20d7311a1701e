"""SAM2 video refinement of the dynamic masks: the Easi3R reference's ``--sam2_mask_refine``, as a plug-in.

The recipe's ``sam2`` section turns it on (off by default). It runs through two hooks, registered by
:mod:`easi3r.strategies.plugin`: ``easi3r_check_recipe`` refuses an unusable section (no checkpoint, no
``sam2`` package) before any frame or weight is read, and ``easi3r_masks_ready`` replaces each pass's masks.

What the reference does, and so what this does (with SAM2's public video-predictor API):

* SAM2 sees the run's frames at the network's size, one object (id 1).
* Two rounds, each from a cleared state. Round one gives SAM2 the attention masks of the odd frames as
  mask prompts, propagates forward from frame 0 and keeps its output on the even frames; round two does the
  opposite. Every frame's SAM2 mask is thus inferred from the other frames' attention masks, never from its
  own, so a false detection on one frame is not simply copied back.
* A pixel is SAM2-dynamic where its mask logit is > 0.
* The masks used afterwards are the union, attention | SAM2. The reference refines the masks of both
  passes: pass 2 re-weights with the refined pass-1 masks, and its aligner uses the refined pass-2 masks.
  It writes (and scores on DAVIS) SAM2's masks alone; ``combine: sam2`` makes the final masks those.

One difference: the released ``sam2`` package reads a video from a folder of JPEGs, where the reference's
vendored copy took a tensor; the frames are written as JPEGs at quality 100 without chroma subsampling.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from easi3r.devices import check_device, resolve_device
from easi3r.errors import Easi3RError, RecipeError
from easi3r.types import DynamicMasks, Frames

__all__ = ["check_recipe", "propagate", "refine_masks", "sam2_section"]

logger = logging.getLogger(__name__)

REFERENCE_CHECKPOINT = "sam2.1_hiera_large.pt"  # what the reference loads (third_party/sam2/checkpoints/)
OBJECT_ID = 1  # one object: everything the attention calls dynamic


def sam2_section(recipe: DictConfig) -> dict[str, Any] | None:
    """The recipe's ``sam2`` section when it is enabled, resolved to plain values; else None."""
    if not OmegaConf.select(recipe, "sam2.enabled", default=False):
        return None
    return OmegaConf.to_container(recipe.sam2, resolve=True)


def check_recipe(recipe: DictConfig) -> None:
    """Refuse an enabled ``sam2`` section that cannot run here, in one line naming the key and what it needs.

    Called once the recipe validated, before frames or weights are read; imports nothing from ``sam2``.
    """
    section = sam2_section(recipe)
    if section is None:
        return
    checkpoint = section.get("checkpoint")
    if checkpoint is None:
        raise RecipeError(
            f"recipe key 'sam2.checkpoint' is null but sam2.enabled is true: give the SAM2 weights file, "
            f"e.g. sam2.checkpoint={REFERENCE_CHECKPOINT} (the reference's)"
        )
    if not Path(checkpoint).expanduser().is_file():
        raise RecipeError(
            f"recipe key 'sam2.checkpoint': file '{checkpoint}' does not exist "
            f"(the SAM2 weights, e.g. {REFERENCE_CHECKPOINT})"
        )
    package = _sam2_package_dir()
    if package is None:
        raise Easi3RError(
            "sam2.enabled is true but the sam2 package is not installed: pip install 'easi3r[sam2]'"
        )
    if not (package / section["config"]).is_file():
        raise RecipeError(
            f"recipe key 'sam2.config': '{section['config']}' is not a model configuration of the installed "
            f"sam2 package (e.g. configs/sam2.1/sam2.1_hiera_l.yaml, the reference's)"
        )
    check_device(str(section["device"]), key="sam2.device")


def _sam2_package_dir() -> Path | None:
    # found without importing it: importing sam2 starts Hydra
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def refine_masks(
    masks: DynamicMasks, frames: Frames, recipe: DictConfig, pass_index: int
) -> DynamicMasks | None:
    """The ``easi3r_masks_ready`` hook's work: ``masks`` refined by SAM2, or None when the recipe does not
    ask for it (section off, another pass, fewer than two frames)."""
    section = sam2_section(recipe)
    if section is None or pass_index not in section["passes"]:
        return None
    if len(frames) < 2:  # each frame's SAM2 mask comes from the other frames' prompts
        logger.warning("sam2: a single frame has no other frames to propagate from; masks kept as they are")
        return None
    check_recipe(recipe)  # a recipe built in Python may not have gone through validate_recipe
    device = resolve_device(str(section["device"]))
    logger.info("sam2: refining the pass-%d masks of %d frames on %s", pass_index, len(frames), device)
    attention = masks.masks.bool().cpu()
    predictor = _build_predictor(section, device)
    with tempfile.TemporaryDirectory(prefix="easi3r-sam2-") as folder:
        write_jpeg_video(frames, Path(folder))
        with torch.inference_mode(), _autocast(device):
            sam2 = propagate(predictor, folder, attention)
    combined = attention | sam2
    if section["combine"] == "sam2" and pass_index == _final_pass(recipe):
        combined = sam2
    return dataclasses.replace(
        masks,
        masks=combined,
        extras={**masks.extras, "attention_masks": attention, "sam2_masks": sam2},
    )


def _final_pass(recipe: DictConfig) -> int:
    passes = recipe.passes
    return 2 if passes.reweight and passes.masks_from == "pass2" else 1


def propagate(predictor: Any, video: str, prompts: Tensor) -> Tensor:
    """SAM2's masks ``(T, H, W)`` bool for a video, each frame inferred from the other parity's prompts.

    ``predictor`` follows SAM2's video-predictor API (``init_state``, ``reset_state``, ``add_new_mask``,
    ``propagate_in_video``); ``video`` is a folder of ``<index>.jpg`` frames; ``prompts (T, H, W)`` bool are
    the attention masks at the frames' size. Output masks come back at that size.
    """
    n_frames = prompts.shape[0]
    state = predictor.init_state(video_path=video)
    out = torch.zeros_like(prompts, dtype=torch.bool)
    for prompted_parity in (1, 0):  # odd frames prompt the even ones, then the reverse
        predictor.reset_state(state)
        for index in range(prompted_parity, n_frames, 2):
            predictor.add_new_mask(state, frame_idx=index, obj_id=OBJECT_ID, mask=prompts[index])
        kept = set(range(1 - prompted_parity, n_frames, 2))
        for index, object_ids, logits in predictor.propagate_in_video(state, start_frame_idx=0):
            if index in kept:
                out[index] = (logits[list(object_ids).index(OBJECT_ID), 0] > 0.0).cpu()
                kept.discard(index)
        if kept:
            raise RuntimeError(f"SAM2 propagated no mask for frames {sorted(kept)}")
    return out


def write_jpeg_video(frames: Frames, folder: Path) -> None:
    """The frames at the network's size as ``00000.jpg``, ``00001.jpg``, … (the folder SAM2 reads)."""
    for index, rgb in enumerate(frames.rgb()):
        Image.fromarray(rgb).save(folder / f"{index:05d}.jpg", quality=100, subsampling=0)


def _build_predictor(section: dict[str, Any], device: str) -> Any:
    """SAM2's video predictor from the section's configuration and checkpoint (SAM2 loads the checkpoint
    with ``torch.load(weights_only=True)``)."""
    from sam2.build_sam import build_sam2_video_predictor

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        checkpoint = str(Path(section["checkpoint"]).expanduser())
        return build_sam2_video_predictor(section["config"], checkpoint, device=device)
    finally:
        # SAM2 logs with logging.info(), which gives a root logger without handlers a stderr handler of
        # its own: every later easi3r line would then be printed twice
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


@contextmanager
def _autocast(device: str) -> Iterator[None]:
    """bfloat16 autocast, as the reference on CUDA (with TF32 matmuls, restored afterwards). SAM2 keeps its
    mask memory in bfloat16 whatever the device, so it needs the autocast on the CPU too: the reference's
    float32 there fails on a dtype mismatch in SAM2's memory attention (seen with sam2 1.1.0)."""
    kind = torch.device(device).type
    if kind != "cuda":
        with torch.autocast(kind, dtype=torch.bfloat16):
            yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
