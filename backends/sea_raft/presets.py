"""SEA-RAFT configurations as data: the architecture numbers of each official model, and a tiny one.

The official configurations are SEA-RAFT's ``config/eval/*.json`` files (the ``spring-M`` file is the one
the Easi3R reference loads ``Tartan-C-T-TSKH-spring540x960-M.pth`` with); only the numbers that shape the
network are kept here. How many refinement iterations to run is a setting of the caller, not of the
weights: the official configs train with 4, and the Easi3R reference runs 20 (:data:`REFERENCE_ITERS`).
"""

from __future__ import annotations

from dataclasses import dataclass

# Refinement iterations of the Easi3R reference's flow call (``dust3r/cloud_opt``), the FlowModel default.
REFERENCE_ITERS = 20


@dataclass(frozen=True)
class SeaRaftConfig:
    """The numbers that decide SEA-RAFT's layers, hence its state-dict keys and shapes."""

    # residual blocks per encoder stage: (3, 4, 6) as in ResNet-34, (2, 2, 2) as in ResNet-18
    stage_depths: tuple[int, int, int]
    initial_dim: int  # channels of the encoders' 7×7 stem
    block_dims: tuple[int, int, int]  # channels of the three encoder stages (1/2, 1/4, 1/8 resolution)
    dim: int  # channels of the recurrent state and of the context features (the matching features: 2·dim)
    radius: int  # the correlation lookup reads a (2r+1)² window per pyramid level
    num_blocks: int  # ConvNeXt blocks in the update operator
    corr_levels: int = 4  # correlation pyramid levels (fixed at 4 by the official code)

    @property
    def corr_channels(self) -> int:
        """Channels of a correlation lookup: one (2r+1)² window per level."""
        return self.corr_levels * (2 * self.radius + 1) ** 2


@dataclass(frozen=True)
class Preset:
    config: SeaRaftConfig
    weights: str  # the official file trained with this configuration, or where the weights come from


_RESNET34, _RESNET18 = (3, 4, 6), (2, 2, 2)

PRESETS: dict[str, Preset] = {
    # SEA-RAFT's config/eval/spring-M.json: the model the Easi3R reference (and MonST3R) uses
    "M": Preset(
        SeaRaftConfig(_RESNET34, 64, (64, 128, 256), dim=128, radius=4, num_blocks=2),
        "Tartan-C-T-TSKH-spring540x960-M.pth",
    ),
    # config/eval/spring-S.json
    "S": Preset(
        SeaRaftConfig(_RESNET18, 64, (64, 128, 256), dim=128, radius=4, num_blocks=2),
        "Tartan-C-T-TSKH-spring540x960-S.pth",
    ),
    # the smallest network the official code can build (it knows ResNet-18 and -34 only), for tests
    "tiny": Preset(
        SeaRaftConfig(_RESNET18, 16, (16, 24, 32), dim=32, radius=2, num_blocks=1),
        "none (checkpoint: random, seeded)",
    ),
}

DEFAULT_PRESET = "M"
