"""easi3r: dynamic-scene reconstruction from two-view 3D networks by reading and re-weighting their
decoder attention, without training (Easi3R, ICCV 2025)."""

from easi3r.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
