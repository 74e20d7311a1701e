"""easi3r: dynamic-scene reconstruction from two-view 3D networks by reading and re-weighting their
decoder attention, without training (Easi3R, ICCV 2025).

``easi3r.run(source, recipe, out_dir, overrides)`` is the ``easi3r run`` command from Python. This module
stays light (plug-ins import ``hookimpl`` from it at start-up): ``run`` is imported on first use.
"""

from typing import Any

from easi3r.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl", "run"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from easi3r.api import run

        return run
    raise AttributeError(f"module 'easi3r' has no attribute {name!r}")
