"""The DataLoader every salt.data stream runs in: per-epoch hook, usage errors from workers, hangs.

Three things a plain ``torch.utils.data.DataLoader`` does not do for us:

* ``on_iter()`` runs before each epoch's iterator is made (streams re-seed per epoch there).
* A worker that meets bad input the *user* must fix (a label outside ``[0, num_classes)``) yields a
  marker batch ``{ERROR_KEY: message}`` instead of raising: torch would re-raise the worker's
  exception with the worker's traceback pasted into its message, and the CLIs print a
  ``UsageError`` as one line. The iterator here turns the marker back into that ``UsageError``.
* Skips a worker counts after its last batch travel in a counts-only batch, folded into a real
  batch here (``lookahead``), so evaluation totals are exact.
* Workers are forked, except while a decode abandoned in this process (``salt.data.decode``)
  still runs: forking then would copy decoder locks held mid-call, so those workers come from a
  forkserver.
* ``timeout``: a worker that returns no batch within it (dead, or stuck in a C call) becomes a
  ``RuntimeError`` naming the loader, the rank, the epoch and how many batches had arrived, not a
  silent hang. Per-sample decode hangs are handled earlier, in the worker (``salt.data.decode``).

The check costs one dict lookup per batch; nothing is synchronised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from salt.errors import UsageError

from .decode import busy_helpers

ERROR_KEY = "__usage_error__"
COUNTS_KEY = "__counts_only__"
DEFAULT_LOADER_TIMEOUT = 1800.0  # s without any batch from the workers; 0 = wait forever


def loader_kwargs(
    num_workers: int, pin_memory: bool, prefetch_factor: int, timeout: float | None
) -> dict[str, Any]:
    """DataLoader keywords for a stream that batches inside its workers."""
    kw: dict[str, Any] = {"batch_size": None, "num_workers": num_workers}
    kw["pin_memory"] = pin_memory and torch.cuda.is_available()
    if num_workers > 0:
        kw["prefetch_factor"] = prefetch_factor
        kw["timeout"] = float(timeout or 0)  # torch only supports a timeout with workers
    return kw


class _CheckedIter:
    """Wraps a DataLoader iterator: marker batches -> UsageError, worker timeout -> named error.

    With ``lookahead`` (evaluation streams) it also folds counts-only batches (``COUNTS_KEY``: the
    skips a worker met after its last batch, or a worker whose samples were all bad) into a real
    batch: it hands out batch k once batch k+1 (or the end) has arrived, so the skips that come
    after the last batch still reach the caller inside it.
    """

    def __init__(self, loader: SaltDataLoader, it: Iterator) -> None:
        self._loader, self._it, self._n = loader, it, 0
        self._lookahead = loader.lookahead
        self._held: dict | None = None
        self._early: dict[str, int] = {}  # counts that arrived before any real batch
        self._done = False

    def __iter__(self) -> _CheckedIter:
        return self

    def _pull(self) -> Any:
        """The next batch from the workers (None at the end), errors translated."""
        try:
            batch = next(self._it)
        except StopIteration:
            return None
        except RuntimeError as err:
            if "timed out" not in str(err):
                raise
            loader = self._loader
            raise RuntimeError(
                f"{loader.describe()}: no batch from its {loader.num_workers} workers within "
                f"{loader.timeout:g} s after {self._n} batches (a worker died or is stuck reading "
                "or decoding; raise the data loader timeout if your storage is that slow)"
            ) from err
        if isinstance(batch, dict) and ERROR_KEY in batch:
            raise UsageError(batch[ERROR_KEY])
        return batch

    def __next__(self) -> Any:
        if not self._lookahead:
            batch = self._pull()
            if batch is None:
                raise StopIteration
            self._n += 1
            return batch
        if self._done:
            raise StopIteration
        while True:
            batch = self._pull()
            if batch is None:
                self._done = True
                out, self._held = self._held, None
                if out is None:  # no real batch at all: keep what was counted for the caller
                    self._loader.orphan_counts = dict(self._early)
                    raise StopIteration
                break
            if COUNTS_KEY in batch:
                _add(self._held["data_counts"] if self._held else self._early, batch[COUNTS_KEY])
                continue
            out, self._held = self._held, batch
            if out is not None:
                break
        if self._early:
            _add(out["data_counts"], self._early)
            self._early = {}
        self._n += 1
        return out

    def __len__(self) -> int:
        return len(self._it)

    def __getattr__(self, name: str) -> Any:  # e.g. Lightning asking the torch iterator
        return getattr(self._it, name)


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + int(v)


class SaltDataLoader(DataLoader):
    """A DataLoader with ``on_iter`` (before each epoch) and the checks in the module docstring.

    ``describe()`` names the loader in errors: the dataset's ``describe()`` when it has one.
    """

    on_iter: Callable[[], None] | None = None
    lookahead: bool = False  # fold counts-only batches into real ones (see _CheckedIter)
    orphan_counts: dict[str, int] | None = None  # counted in an iteration that had no batch

    def describe(self) -> str:
        fn = getattr(self.dataset, "describe", None)
        return fn() if callable(fn) else type(self.dataset).__name__

    def __iter__(self) -> _CheckedIter:  # type: ignore[override]
        if self.on_iter is not None:
            self.on_iter()
        if self.num_workers > 0 and self.multiprocessing_context is None and busy_helpers():
            # a decode abandoned in this process is still running: a forked worker would inherit
            # the decoder's locks mid-call and could deadlock; forkserver children start clean
            self.multiprocessing_context = "forkserver"
        return _CheckedIter(self, super().__iter__())


def make_loader(
    stream: IterableDataset,
    num_workers: int,
    pin_memory: bool,
    prefetch_factor: int,
    timeout: float | None = DEFAULT_LOADER_TIMEOUT,
) -> SaltDataLoader:
    """A ``SaltDataLoader`` over a stream that yields whole batches."""
    return SaltDataLoader(
        stream, **loader_kwargs(num_workers, pin_memory, prefetch_factor, timeout)
    )
