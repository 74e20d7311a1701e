"""Which torch devices this machine has: ``auto`` resolved, and a named device checked before any work."""

from __future__ import annotations

import torch

from easi3r.errors import Easi3RError

__all__ = ["check_device", "resolve_device"]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str) -> str:
    """``auto`` → cuda if available, then mps, then cpu; any other name is returned as it is."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def check_device(device: str, key: str = "backbone.device") -> None:
    """Refuse a device this torch build or machine lacks, in one line, before a model is built on it.

    ``device`` is one the recipe schema allows: auto, cpu, cuda, cuda:N or mps.
    """
    parsed = torch.device(resolve_device(device))
    build = f"torch {torch.__version__}"
    if parsed.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise Easi3RError(
                f"{key}: '{device}' needs CUDA, but {build} was built without it; use cpu or auto"
            )
        count = torch.cuda.device_count()
        if count == 0:
            raise Easi3RError(f"{key}: '{device}' needs a GPU, but CUDA sees none here; use cpu or auto")
        if parsed.index is not None and parsed.index >= count:
            raise Easi3RError(
                f"{key}: '{device}' does not exist: CUDA sees {count} GPU(s), cuda:0 to cuda:{count - 1}"
            )
    elif parsed.type == "mps" and not _mps_available():
        raise Easi3RError(
            f"{key}: '{device}' needs Apple's Metal (MPS), which {build} cannot use here; use cpu or auto"
        )
