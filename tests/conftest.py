"""Fixtures and settings every test file shares.

Every test runs with one intra-op torch thread (``one_thread``, autouse): on the 2-core CI machine
a test's DataLoader worker, or a second process, plus torch's default two OpenMP threads
oversubscribe the cores, and OpenMP's spin-waiting then makes tiny models ~10-15x slower (a
vit_test step 2.4 s with two threads under load vs 0.23 s with one). ``single_thread()`` is the
same as a context manager, for code that runs outside a test (module-scoped fixtures).

``shards``: the synthetic H.264 training shards of the training tests, written once per session.
A test file that needs other shards defines its own ``shards`` fixture, which takes precedence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op torch thread inside the block (the previous count restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Train shard pattern of 32 synthetic 16-frame 32-px clips (written once per session)."""
    from salt.data.synthetic import write_synthetic_shards

    out = tmp_path_factory.getbasetemp() / "salt_train_shards"
    done = out / "synthetic.json"
    if not done.is_file():
        write_synthetic_shards(
            str(out), num_train=32, num_val=4, num_probe_train=4, frames=16, size=32
        )
    return str(out / "train-*.tar")
