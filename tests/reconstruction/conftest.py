"""Shared by the reconstruction tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these are small single-image workloads, and on a busy 2-core machine a second
    thread mostly waits on the first (ten times slower, measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
