"""Shared fixtures: the golden reference outputs and the tiny backbone built from the golden weights."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from safetensors.numpy import load_file

from .helpers import GOLDEN_NET

# tests never write into the checkout: no example database, and Hypothesis's own caches in a temporary folder
settings.register_profile("easi3r", database=None)
settings.load_profile("easi3r")
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="easi3r-hypothesis-"))


@pytest.fixture(scope="session")
def golden() -> dict:
    return load_file(GOLDEN_NET / "reference.safetensors")


@pytest.fixture(scope="session")
def golden_info() -> dict:
    return json.loads((GOLDEN_NET / "info.json").read_text())


@pytest.fixture(scope="session")
def golden_model():
    """The golden checkpoint (official .pth layout), loaded the way a user's checkpoint is loaded."""
    from easi3r.backends.checkpoint import load_model

    model, _ = load_model(GOLDEN_NET / "weights.pth")
    return model


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Small problems gain nothing from threads, and on a shared machine idle-spinning threads make them
    crawl: one torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``), the
    setting restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
