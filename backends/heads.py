"""Prediction heads of the CroCo-family network: linear and DPT, with DUSt3R's output activations.

A head takes the list of decoder outputs ``[encoder tokens, layer 1, …, layer L (normalised)]`` and the
image size, and returns ``{"pts3d": (B, H, W, 3), "conf": (B, H, W)}``. Parameter names match the
official checkpoints (``proj`` for the linear head, ``dpt.*`` for DPT, including the aliased
``scratch.layerN_rn`` / ``scratch.layer_rn.N`` convolutions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def postprocess(raw: Tensor, depth_mode: Sequence, conf_mode: Sequence) -> dict[str, Tensor]:
    """(B, 4, H, W) raw head output → points with depth mode "exp" and confidence ``vmin + exp(x)``."""
    fmap = raw.permute(0, 2, 3, 1)
    return {
        "pts3d": _activate_points(fmap[..., :3], depth_mode),
        "conf": _activate_conf(fmap[..., 3], conf_mode),
    }


def _activate_points(xyz: Tensor, depth_mode: Sequence) -> Tensor:
    mode, vmin, vmax = depth_mode
    if not (vmin == -float("inf") and vmax == float("inf")):
        raise ValueError(f"bounded depth modes are not supported: {tuple(depth_mode)}")
    if mode == "linear":
        return xyz
    d = xyz.norm(dim=-1, keepdim=True)
    direction = xyz / d.clip(min=1e-8)
    if mode == "square":
        return direction * d.square()
    if mode == "exp":
        return direction * torch.expm1(d)
    raise ValueError(f"unsupported depth mode {mode!r}")


def _activate_conf(x: Tensor, conf_mode: Sequence) -> Tensor:
    mode, vmin, vmax = conf_mode
    if mode == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if mode == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unsupported confidence mode {mode!r}")


class LinearHead(nn.Module):
    """One linear layer per token to a 16×16 patch of (x, y, z, conf), then pixel shuffle."""

    def __init__(self, dim: int, patch_size: int, depth_mode: Sequence, conf_mode: Sequence) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.depth_mode, self.conf_mode = depth_mode, conf_mode
        self.proj = nn.Linear(dim, 4 * patch_size**2)

    def forward(self, decout: Sequence[Tensor], img_shape: Sequence[int]) -> dict[str, Tensor]:
        h, w = img_shape
        tokens = decout[-1]
        b = tokens.shape[0]
        feat = self.proj(tokens).transpose(-1, -2).reshape(b, -1, h // self.patch_size, w // self.patch_size)
        return postprocess(F.pixel_shuffle(feat, self.patch_size), self.depth_mode, self.conf_mode)


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """Adds the skip input (after a residual unit), refines, upsamples ×2, projects."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Upsample(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _DPT(nn.Module):
    """Dense prediction transformer decoder over four token layers (named as in the checkpoints)."""

    def __init__(
        self, dims: Sequence[int], hooks: Sequence[int], patch_size: int, out_channels: int = 4
    ) -> None:
        super().__init__()
        layer_dims, feature_dim, last_dim = (96, 192, 384, 768), 256, 128
        self.hooks = list(hooks)
        self.patch_size = patch_size
        self.scratch = nn.Module()
        for i, d in enumerate(layer_dims, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(d, feature_dim, 3, padding=1, bias=False))
        # the official model registers the same four convolutions a second time under this name
        self.scratch.layer_rn = nn.ModuleList(getattr(self.scratch, f"layer{i}_rn") for i in range(1, 5))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", _FusionBlock(feature_dim))
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            _Upsample(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )
        # token maps at 1/16 → 1/4, 1/8, 1/16, 1/32 of the image
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(dims[0], layer_dims[0], 1), nn.ConvTranspose2d(layer_dims[0], layer_dims[0], 4, 4)),
                nn.Sequential(nn.Conv2d(dims[1], layer_dims[1], 1), nn.ConvTranspose2d(layer_dims[1], layer_dims[1], 2, 2)),
                nn.Sequential(nn.Conv2d(dims[2], layer_dims[2], 1)),
                nn.Sequential(nn.Conv2d(dims[3], layer_dims[3], 1), nn.Conv2d(layer_dims[3], layer_dims[3], 3, 2, 1)),
            ]
        )  # fmt: skip

    def forward(self, decout: Sequence[Tensor], img_shape: Sequence[int]) -> Tensor:
        h, w = img_shape
        nh, nw = h // self.patch_size, w // self.patch_size
        layers = []
        for i, hook in enumerate(self.hooks):
            tokens = decout[hook]
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, nh, nw)
            layers.append(self.scratch.layer_rn[i](self.act_postprocess[i](grid)))
        path = self.scratch.refinenet4(layers[3])[:, :, : layers[2].shape[2], : layers[2].shape[3]]
        path = self.scratch.refinenet3(path, layers[2])
        path = self.scratch.refinenet2(path, layers[1])
        path = self.scratch.refinenet1(path, layers[0])
        return self._head_in_row_tiles(path)

    def _head_in_row_tiles(self, path: Tensor, tile_rows: int = 32) -> Tensor:
        """``self.head(path)``, with its full-resolution part (×2 upsampling, 3×3 conv, ReLU, 1×1 conv)
        computed in tiles of output rows. Those 128-channel full-resolution maps are the largest tensors
        of the whole network (72 MiB each at 512×288); tiles keep only a few rows of them alive. Same
        numbers up to float rounding: the upsampling is separable, and each tile carries the one-row halo
        its 3×3 convolution reads."""
        reduce, _, conv, relu, project = self.head
        x = reduce(path)
        b, _, h, w = x.shape
        height, width = 2 * h, 2 * w
        out = x.new_empty(b, project.out_channels, height, width)
        for top in range(0, height, tile_rows):
            bottom = min(height, top + tile_rows)
            lo, hi = max(0, top - 1), min(height, bottom + 1)
            rows = _upsample_rows(x, lo, hi, height, width)
            # zero rows where the tile touches the image border: the convolution's own padding
            rows = F.pad(rows, (0, 0, int(lo == top), int(hi == bottom)))
            hidden = F.conv2d(rows, conv.weight, conv.bias, padding=(0, 1))
            out[:, :, top:bottom] = project(relu(hidden))
        return out


def _upsample_rows(x: Tensor, lo: int, hi: int, height: int, width: int) -> Tensor:
    """Rows ``lo:hi`` of ``F.interpolate(x, (height, width), mode="bilinear", align_corners=True)``."""
    h = x.shape[2]
    src = torch.arange(lo, hi, device=x.device, dtype=x.dtype) * (
        (h - 1) / (height - 1) if height > 1 else 0.0
    )
    y0 = src.floor().long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    frac = (src - y0.to(x.dtype))[None, None, :, None]
    rows = x[:, :, y0] * (1 - frac) + x[:, :, y1] * frac
    # the rows already sit at their output positions: only the width is interpolated
    return F.interpolate(rows, size=(hi - lo, width), mode="bilinear", align_corners=True)


class DPTHead(nn.Module):
    """DUSt3R's DPT head: taps the encoder output and decoder layers L/2, 3L/4 and L."""

    def __init__(
        self, dims: Sequence[int], dec_depth: int, patch_size: int, depth_mode: Sequence, conf_mode: Sequence
    ) -> None:
        super().__init__()
        if dec_depth <= 9:
            raise ValueError(f"the DPT head needs a decoder deeper than 9 layers, got {dec_depth}")
        self.depth_mode, self.conf_mode = depth_mode, conf_mode
        self.dpt = _DPT(dims, (0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth), patch_size)

    @property
    def hooks(self) -> list[int]:
        return self.dpt.hooks

    def forward(self, decout: Sequence[Tensor], img_shape: Sequence[int]) -> dict[str, Tensor]:
        return postprocess(self.dpt(decout, img_shape), self.depth_mode, self.conf_mode)
