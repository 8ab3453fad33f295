"""Model tests run torch on one thread.

Their models are tiny, so each op is a few microseconds of work and the cost is OpenMP's fork/join;
on a shared 2-core machine a second thread waiting for a busy core makes every op wait (measured:
cached+uncached 64-token generation 1.1 s with 2 threads vs 0.2 s with 1 under load). Results do
not depend on it: every comparison is made within one process, at one thread count.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
