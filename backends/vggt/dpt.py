"""VGGT's dense heads: a DPT decoder (Ranftl et al. 2021) over four aggregator layers, one per output.

For each of four layers, the patch tokens are normalised, laid out on the patch grid, projected to
``out_channels[i]`` channels and resampled to 4×, 2×, 1× and ½× the grid; a fixed sinusoidal embedding
of the normalised image coordinates (weight 0.1) is added after the projection and again at full
resolution. RefineNet-style fusion blocks merge the four maps coarse to fine; the fused map is
upsampled to the image and a small convolution stack gives ``output_dim`` channels: the prediction
(all channels but the last, through ``activation``) and a confidence (the last, ``1 + exp(x)``).

The depth head uses ``activation="exp"`` (1 channel), the point head ``"inv_log"``
(``sign(x)·(exp|x| − 1)``, 3 channels). Parameter names follow the official ``DPTHead``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("exp", "inv_log")
_POS_EMBED_WEIGHT = 0.1
_POS_EMBED_BASE = 100.0
_HIDDEN = 32  # channels of the last 3×3 convolution, fixed in the official head
_FRAMES_PER_CHUNK = 8  # frames decoded at once: bounds the full-resolution feature maps in memory


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))``.

    The official unit applies an in-place ReLU to its input before the first convolution, so the
    skip connection carries ``relu(x)``, not ``x``; this reproduces that.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """Adds the refined skip map (if any) to the coarser path, refines, upsamples, projects (1×1)."""

    def __init__(self, features: int, *, has_skip: bool) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features) if has_skip else None
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if self.resConfUnit1 is not None and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size if size is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        return self.out_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class DPTHead(nn.Module):
    """One dense head over the aggregator layers ``layers`` (four indices into the aggregator's output)."""

    def __init__(
        self,
        dim_in: int,
        *,
        patch_size: int,
        output_dim: int,
        activation: str,
        features: int,
        out_channels: Sequence[int],
        layers: Sequence[int],
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown DPT activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if len(out_channels) != 4 or len(layers) != 4:
            raise ValueError("a DPT head reads exactly four layers with four channel counts")
        self.patch_size = patch_size
        self.activation = activation
        self.layers = tuple(layers)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, kernel_size=1) for c in out_channels)
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(
                self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False)
            )
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(features, has_skip=i < 4))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, _HIDDEN, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(_HIDDEN, output_dim, kernel_size=1),
        )

    def forward(
        self, aggregated: Sequence[Tensor | None], patch_start_idx: int, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Aggregator layers ``(B, S, P, 2C)`` → prediction ``(B, S, H, W, output_dim - 1)`` and confidence
        ``(B, S, H, W)``, decoded a few frames at a time."""
        frames = next(aggregated[i] for i in self.layers).shape[1]
        chunks = [
            self._decode(
                [aggregated[i][:, start : start + _FRAMES_PER_CHUNK] for i in self.layers],
                patch_start_idx,
                image_size,
            )
            for start in range(0, frames, _FRAMES_PER_CHUNK)
        ]
        preds, confs = zip(*chunks)
        return torch.cat(preds, dim=1), torch.cat(confs, dim=1)

    def _decode(
        self, layers: list[Tensor], patch_start_idx: int, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        height, width = image_size
        rows, cols = height // self.patch_size, width // self.patch_size
        batch, frames = layers[0].shape[:2]
        maps = []
        for tokens, project, resize in zip(layers, self.projects, self.resize_layers):
            x = self.norm(tokens[:, :, patch_start_idx:].reshape(batch * frames, rows * cols, -1))
            x = x.permute(0, 2, 1).reshape(batch * frames, -1, rows, cols)
            maps.append(resize(_add_position(project(x), width / height)))
        out = self._fuse(maps)
        out = F.interpolate(
            out, size=(rows * self.patch_size, cols * self.patch_size), mode="bilinear", align_corners=True
        )
        out = self.scratch.output_conv2(_add_position(out, width / height)).permute(0, 2, 3, 1)
        pred, conf = self._activate(out[..., :-1]), 1 + out[..., -1].exp()
        return pred.reshape(batch, frames, *pred.shape[1:]), conf.reshape(batch, frames, *conf.shape[1:])

    def _fuse(self, maps: list[Tensor]) -> Tensor:
        """Coarse to fine: each fusion block ends at the next finer map's size, the last doubles its size."""
        s = self.scratch
        l1, l2, l3, l4 = (rn(m) for rn, m in zip((s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn), maps))
        out = s.refinenet4(l4, size=tuple(l3.shape[-2:]))
        out = s.refinenet3(out, l3, size=tuple(l2.shape[-2:]))
        out = s.refinenet2(out, l2, size=tuple(l1.shape[-2:]))
        out = s.refinenet1(out, l1)
        return s.output_conv1(out)

    def _activate(self, x: Tensor) -> Tensor:
        if self.activation == "exp":
            return x.exp()
        return torch.sign(x) * torch.expm1(x.abs())  # inv_log


def _add_position(x: Tensor, aspect: float) -> Tensor:
    """``x (N, C, h, w)`` plus 0.1 × a sinusoidal embedding of each cell's image coordinates.

    The coordinates span the image's aspect ratio normalised by its diagonal, cell centres of an
    ``h × w`` grid; the first half of the channels encodes x, the second half y, each as sines then
    cosines of the coordinate times frequencies ``100^(-i/(C/4))``.
    """
    channels, h, w = x.shape[1:]
    diagonal = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diagonal, 1.0 / diagonal
    xs = torch.linspace(-span_x * (w - 1) / w, span_x * (w - 1) / w, w, dtype=x.dtype, device=x.device)
    ys = torch.linspace(-span_y * (h - 1) / h, span_y * (h - 1) / h, h, dtype=x.dtype, device=x.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    embed = torch.cat((_sincos(grid_x, channels // 2), _sincos(grid_y, channels // 2)), dim=-1)
    return x + (embed * _POS_EMBED_WEIGHT).permute(2, 0, 1)[None].to(x.dtype)


def _sincos(coords: Tensor, channels: int) -> Tensor:
    """``(h, w, channels)``: sin then cos of ``coords`` times ``channels / 2`` frequencies, in float64."""
    omega = torch.arange(channels // 2, dtype=torch.float64, device=coords.device) / (channels / 2.0)
    angles = coords.to(torch.float64)[..., None] * (1.0 / _POS_EMBED_BASE**omega)
    return torch.cat((angles.sin(), angles.cos()), dim=-1).float()
