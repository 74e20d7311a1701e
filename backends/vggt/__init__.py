"""VGGT (Visual Geometry Grounded Transformer, Wang et al., CVPR 2025) as a frame-set network.

Modules, in the order data flows: :mod:`.layers` (attention block with QK-norm, RoPE and LayerScale),
:mod:`.dinov2` (the DINOv2 ViT with registers that embeds each frame), :mod:`.aggregator` (alternating
frame-wise and global attention), :mod:`.camera_head`, :mod:`.dpt` (depth and point heads), :mod:`.pose`
(pose encoding ↔ cameras, depth unprojection), :mod:`.network` (:class:`~.network.VGGTNetwork`),
:mod:`.presets` and :mod:`.checkpoint` (official ``facebook/VGGT-1B`` files).

Parameter names equal those of the official ``VGGT`` module, so its state dict loads unchanged; only the
tracking head (``track_head.*``) is left out. Nothing heavy happens at import time.
"""
