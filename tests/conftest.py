"""Fixtures shared by test modules."""

import pytest
import torch


@pytest.fixture
def single_thread_torch():
    """One torch thread while a test runs (Lava forks: torch in its processes hangs otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
