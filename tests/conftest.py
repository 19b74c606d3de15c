"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Small problems run fastest, and reproducibly, on one thread (CI has two cores shared with Ray workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
