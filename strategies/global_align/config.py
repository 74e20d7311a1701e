"""The settings of the ``global`` aligner (:class:`AlignConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from easi3r.errors import GeometryError

__all__ = ["AlignConfig"]


@dataclass
class AlignConfig:
    """Settings of the ``global`` aligner; defaults are the reference's effective values."""

    iters: int = 300
    lr: float = 0.01
    lr_min: float = 1e-3
    schedule: str = "linear"  # or "cosine"
    init: str = "mst"  # "mst", or "random" (the reference's init=None: random poses, depth ≈ e^-3)
    shared_focal: bool = True
    optimize_pp: bool = False
    focal_break: float = 20.0  # focal parameter = focal_break · log f
    base_scale: float = 0.5  # pair scales are normalised to a geometric mean of this
    min_conf_thr: float = 2.5  # pixels used by the PnP of the initialisation
    pnp_iterations: int = 10
    pnp_reproj_px: float = 5.0
    temporal_smoothing_weight: float = 0.0
    translation_weight: float = 1.0  # inside the temporal term: ‖R_rel − I‖_F + w·‖t_rel‖
    exclude_dynamic: bool = False  # True: dynamic pixels enter neither the 3D term nor the initialisation
    # quirk: the reference estimates the focal of a tree node from the pair processed *before* it (a stale
    # loop variable), so the init focal can come from another frame's pointmap; False uses the node's own pair
    stale_edge_focal: bool = True
    # MonST3R's optical-flow prior (flow_loss.py), under the reference's names; the weight 0 turns it off.
    # The other defaults are the reference evaluation's (training.py l.107-114); its demo uses thre 25.
    flow_loss_weight: float = 0.0
    flow_loss_start_epoch: float = 0.1  # the term starts at step iters·this (0.1·300 = step 30)
    flow_loss_thre: float = 20.0  # a step whose flow loss exceeds this drops the term; 0 keeps it always
    pxl_thre: float = 50.0  # per-pixel smooth-L1 values ≥ this are left out; 0 keeps every static pixel
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise GeometryError(f"align schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.init not in ("mst", "random"):
            raise GeometryError(f"align init must be 'mst' or 'random', got {self.init!r}")
        if self.flow_loss_weight < 0:
            raise GeometryError(f"align flow_loss_weight must be >= 0, got {self.flow_loss_weight}")
