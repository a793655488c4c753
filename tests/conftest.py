"""Session-wide test settings.

Every test runs with one intra-op torch thread: on the 2-core CI machine a test's DataLoader
worker, or a second process, plus torch's default two OpenMP threads oversubscribe the cores, and
OpenMP's spin-waiting then makes tiny models ~10-15x slower (measured: a vit_test step 2.4 s with
two threads under load vs 0.23 s with one).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
