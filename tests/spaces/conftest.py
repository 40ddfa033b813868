"""Fixtures for the spaces tests: tiny torchvision models at 32 px and random calibration batches."""

from __future__ import annotations

import pytest
import torch

from spaces.base import Context

NUM_CLASSES = 5
SIZE = 32


def make(name: str, seed: int = 0) -> torch.nn.Module:
    from rsc.models import create_model

    torch.manual_seed(seed)
    return create_model(name, NUM_CLASSES, image_size=SIZE).eval()


def batches(n: int = 2, batch_size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, SIZE, SIZE, generator=g),
             torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)) for _ in range(n)]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads spin against other
    processes and LAPACK calls (tensorly's SVDs) get up to 100x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def ctx() -> Context:
    return Context(num_classes=NUM_CLASSES, image_size=SIZE, calibration=batches())


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def resnet18() -> torch.nn.Module:
    """A shared ResNet-18; tests must not mutate it (spaces never do - that is tested)."""
    return make("resnet18")


@pytest.fixture(scope="session")
def small() -> torch.nn.Module:
    """A shared SqueezeNet 1.1 (0.7 M params): the cheap model most tests use."""
    return make("squeezenet1_1")
