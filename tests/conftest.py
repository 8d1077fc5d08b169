"""Test-session settings shared by every test module."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Run every test on one torch thread.

    The models under test are tiny, so a second thread gains nothing, and on a shared 2-core
    machine two threads per process ran many times slower than one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
