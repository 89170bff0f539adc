"""Settings shared by every test."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread.

    The tests' tiny models gain nothing from a second thread, and on a shared 2-core
    machine a thread that waits for a busy core makes them slower. One thread also fixes
    the order of the CPU kernels' sums, which the parity tolerances rely on.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
