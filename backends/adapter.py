"""The backbone adapter: runs any CroCo-family network the fast way, with capture and re-weighting.

:class:`CroCoBackbone` works on this project's :class:`~easi3r.backends.croco.CroCoStereo` and on a
foreign CroCo-family ``nn.Module`` with the same attribute layout (``patch_embed``, ``enc_blocks``,
``enc_norm``, ``decoder_embed``, ``dec_blocks``, ``dec_blocks2``, ``dec_norm``, ``downstream_head1/2``),
such as the upstream dust3r ``AsymmetricCroCo3DStereo`` object a researcher already has.
:func:`adopt_attention` swaps a foreign model's attention modules for fused, hookable ones that share
its parameters.

Execution shape: :meth:`CroCoBackbone.encode` runs the encoder once per frame; :meth:`decode` gathers the
cached tokens of each ordered pair and runs both decoders on batches of pairs, installing an
:class:`~easi3r.attention.AttentionHook` on every cross-attention layer for the duration of a batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from easi3r.attention import AttentionHook, BatchReweighting, Reweight, stack_captured
from easi3r.backends.croco import Attention, CrossAttention, grid_positions
from easi3r.contracts import CaptureStrategy, Progress
from easi3r.devices import resolve_device
from easi3r.types import Encoded, PairAttention, PairOutputs, PairPredictions

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class CroCoBackbone:
    """Backbone interface (:class:`easi3r.contracts.Backbone`) over a CroCo-family network."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str = "dust3r",
        device: str = "cpu",
        batch_size: int = 8,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.name = name
        self.device = resolve_device(device)
        self.model = adopt_attention(model).to(self.device).eval()
        self.batch_size = batch_size
        self.precision = precision
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.decoder_layers = len(model.dec_blocks)
        self.decoder_heads = int(model.dec_blocks[0].cross_attn.num_heads)
        self.dtype = next(model.parameters()).dtype  # float32 for checkpoints; float64 in identity tests

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=torch.device(self.device).type, dtype=dtype):
                yield

    @torch.no_grad()  # not inference_mode: the outputs feed the aligner's autograd
    def encode(self, images: Tensor) -> Encoded:
        h, w = images.shape[-2:]
        chunks = []
        with self._autocast():
            for start in range(0, images.shape[0], self.batch_size):
                batch = images[start : start + self.batch_size].to(self.device, self.dtype)
                tokens, _ = (
                    self.model.encode(batch) if hasattr(self.model, "encode") else _encode(self.model, batch)
                )
                chunks.append(tokens)
        grid = (h // self.patch_size, w // self.patch_size)
        return Encoded(
            tokens=torch.cat(chunks),
            positions=grid_positions(*grid, self.device)[0],
            grid=grid,
            image_size=(int(h), int(w)),
        )

    @torch.no_grad()  # not inference_mode: the outputs feed the aligner's autograd
    def decode(
        self,
        encoded: Encoded,
        pairs: Tensor,
        *,
        capture: CaptureStrategy | None = None,
        reweight: Reweight | None = None,
        heads: bool = True,
        progress: Progress | None = None,
    ) -> PairOutputs:
        pairs = pairs.to(torch.long).cpu()
        maps1, maps2, preds = [], [], []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            reweighting = None if reweight is None else reweight.for_pairs(batch, self.device)
            result = self._decode_batch(encoded, batch, capture, reweighting, heads)
            if capture is not None:
                maps1.append(result["maps1"].float().cpu())
                maps2.append(result["maps2"].float().cpu())
            if heads:
                preds.append({k: v.cpu() for k, v in result.items() if not k.startswith("maps")})
            if progress is not None:
                progress(len(batch))
        grid = encoded.grid
        attention = None
        if capture is not None:
            attention = PairAttention(
                decoder1=torch.cat(maps1).reshape(len(pairs), *grid, -1),
                decoder2=torch.cat(maps2).reshape(len(pairs), *grid, -1),
            )
        predictions = None
        if heads:
            predictions = PairPredictions(**{k: torch.cat([p[k] for p in preds]) for k in preds[0]})
        return PairOutputs(pairs=pairs, attention=attention, predictions=predictions)

    def _decode_batch(
        self,
        encoded: Encoded,
        batch: Tensor,
        capture: CaptureStrategy | None,
        reweighting: BatchReweighting | None,
        heads: bool,
    ) -> dict[str, Tensor]:
        m = self.model
        e1, e2 = (
            encoded.tokens[batch[:, 0].to(encoded.tokens.device)],
            encoded.tokens[batch[:, 1].to(encoded.tokens.device)],
        )
        pos = encoded.positions[None].expand(len(batch), -1, -1)
        keep1 = _head_inputs(m.downstream_head1, self.decoder_layers) if heads else set()
        keep2 = _head_inputs(m.downstream_head2, self.decoder_layers) if heads else set()
        out1: list[Tensor | None] = [e1 if 0 in keep1 else None]
        out2: list[Tensor | None] = [e2 if 0 in keep2 else None]
        hooks1, hooks2 = [], []
        with self._autocast():
            f1, f2 = m.decoder_embed(e1), m.decoder_embed(e2)
            for layer, (blk1, blk2) in enumerate(zip(m.dec_blocks, m.dec_blocks2)):
                hooks1.append(AttentionHook(1, layer, capture, reweighting))
                hooks2.append(AttentionHook(2, layer, capture, reweighting))
                with _hooked(blk1.cross_attn, hooks1[-1]), _hooked(blk2.cross_attn, hooks2[-1]):
                    f1, f2 = blk1(f1, f2, pos, pos)[0], blk2(f2, f1, pos, pos)[0]
                last = layer == self.decoder_layers - 1
                if last:
                    f1, f2 = m.dec_norm(f1), m.dec_norm(f2)
                out1.append(f1 if layer + 1 in keep1 else None)
                out2.append(f2 if layer + 1 in keep2 else None)
        result: dict[str, Tensor] = {}
        if capture is not None:
            result["maps1"] = stack_captured(hooks1)
            result["maps2"] = stack_captured(hooks2)
        if heads:
            shape = encoded.image_size
            # heads run in the weights' precision whatever the autocast setting, as in the official model
            with torch.autocast(device_type=torch.device(self.device).type, enabled=False):
                res1 = m.downstream_head1([None if t is None else t.to(self.dtype) for t in out1], shape)
                res2 = m.downstream_head2([None if t is None else t.to(self.dtype) for t in out2], shape)
            result.update(
                pts3d_1=res1["pts3d"], conf_1=res1["conf"], pts3d_2=res2["pts3d"], conf_2=res2["conf"]
            )
        return result


@contextlib.contextmanager
def _hooked(module: nn.Module, hook: AttentionHook) -> Iterator[None]:
    module.hook = hook
    try:
        yield
    finally:
        module.hook = None


def _head_inputs(head: nn.Module, n_layers: int) -> set[int]:
    """Indices of the decoder outputs a head reads (0 = encoder tokens, L = last layer)."""
    hooks = getattr(getattr(head, "dpt", None), "hooks", None)
    return set(hooks) if hooks is not None else {n_layers}


def _encode(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Encoder of a foreign CroCo-family model (upstream dust3r's ``_encode_image``)."""
    true_shape = torch.tensor([images.shape[-2:]] * images.shape[0], device=images.device)
    x, pos, _ = model._encode_image(images, true_shape)
    return x, pos


def adopt_attention(model: nn.Module) -> nn.Module:
    """Give a CroCo-family model fused, hookable attention by swapping its attention modules.

    Modules of this project are kept. A foreign self-attention (``qkv``, ``proj``, ``rope``,
    ``num_heads``) or cross-attention (``projq``, ``projk``, ``projv``, ``proj``, ``rope``,
    ``num_heads``) module is replaced by ours, sharing the same parameter tensors, so the state dict is
    unchanged. The foreign RoPE module is kept (upstream's compiled kernel or its PyTorch fallback).
    """
    for blocks in (getattr(model, "enc_blocks", []), model.dec_blocks, model.dec_blocks2):
        for blk in blocks:
            if not isinstance(blk.attn, Attention):
                blk.attn = _adopt_self_attention(blk.attn)
            if hasattr(blk, "cross_attn") and not isinstance(blk.cross_attn, CrossAttention):
                blk.cross_attn = _adopt_cross_attention(blk.cross_attn)
    return model


def _adopt_self_attention(old: nn.Module) -> Attention:
    new = Attention.__new__(Attention)
    nn.Module.__init__(new)
    new.num_heads, new.scale = old.num_heads, old.scale
    new.qkv, new.proj, new.rope = old.qkv, old.proj, _RopeAdapter(old.rope)
    return new


def _adopt_cross_attention(old: nn.Module) -> CrossAttention:
    new = CrossAttention.__new__(CrossAttention)
    nn.Module.__init__(new)
    new.num_heads, new.scale = old.num_heads, old.scale
    new.projq, new.projk, new.projv, new.proj = old.projq, old.projk, old.projv, old.proj
    new.rope, new.hook = _RopeAdapter(old.rope), None
    return new


class _RopeAdapter(nn.Module):
    """Calls a foreign RoPE module out of place (upstream's CUDA kernel rotates in place)."""

    def __init__(self, rope: nn.Module | None) -> None:
        super().__init__()
        self.rope = rope

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return tokens if self.rope is None else self.rope(tokens.clone(), positions)
