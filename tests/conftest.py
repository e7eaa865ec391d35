"""Shared fixtures: tiny random subjects on every backend, packaged real models when fetched."""

from __future__ import annotations

import pytest

import mechkit
from mechkit.errors import ModelNotFetchedError

REAL_MODELS = ("gemma-3-270m", "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_tl():
    return mechkit.load("tiny:llama", backend="tl")


@pytest.fixture(scope="session")
def tiny_nnsight():
    return mechkit.load("tiny:llama", backend="nnsight")


@pytest.fixture(scope="session")
def tiny_gemma():
    return mechkit.load("tiny:gemma3", backend="nnsight")


def _real(model_id: str, backend: str):
    try:
        return mechkit.load(model_id, backend=backend)
    except ModelNotFetchedError:
        pytest.skip(f"{model_id} is not fetched: run `mechkit models fetch {model_id}` (scripts/setup.sh does)")


@pytest.fixture(scope="session")
def gemma_tl():
    return _real("gemma-3-270m", "tl")


@pytest.fixture(scope="session")
def smollm_tl():
    return _real("smollm2-135m-instruct", "tl")


@pytest.fixture(scope="session")
def gemma_nnsight():
    return _real("gemma-3-270m", "nnsight")
