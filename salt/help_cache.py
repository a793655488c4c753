"""Help text that is expensive to build, cached per installed version (``salt fit --help``).

Building ``salt fit``'s parser means importing torch, Lightning and every config class (seconds
to tens of seconds on a loaded login node), only to print text that changes when the code does.
The first ``--help`` builds it and stores it under ``$XDG_CACHE_HOME/salt/help`` (default
``~/.cache/salt/help``); later calls read the file. The key covers everything the text depends
on: the bytes of salt's own sources (``salt``, ``salt.data``, ``salt.models``, ``salt.probes``),
the versions of Python, torch, Lightning and jsonargparse, and the terminal width argparse
wraps at. A cache folder that cannot be written just means no caching; ``SALT_HELP_CACHE=0``
switches it off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from importlib import metadata, util
from pathlib import Path

_PACKAGES = ("salt", "salt.data", "salt.models", "salt.probes")
_DISTRIBUTIONS = ("torch", "pytorch-lightning", "jsonargparse")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "salt" / "help"


def _source_dirs() -> list[Path]:
    dirs = []
    for name in _PACKAGES:
        spec = util.find_spec(name)  # imports the parent package only (light)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def fingerprint(name: str) -> str:
    """Hex key of everything ``name``'s help text depends on (see the module docstring)."""
    h = hashlib.sha256(name.encode())
    h.update(sys.version.encode())
    for dist in _DISTRIBUTIONS:
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    h.update(str(shutil.get_terminal_size().columns).encode())
    for folder in _source_dirs():
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:20]


def cached_help(name: str, build: Callable[[], str]) -> str:
    """The help text of ``name``: from the cache if current, else ``build()`` (then stored)."""
    if os.environ.get("SALT_HELP_CACHE", "1") == "0":
        return build()
    path = cache_dir() / f"{name}-{fingerprint(name)}.txt"
    try:
        return path.read_text()
    except OSError:
        pass
    text = build()
    if not text.strip():
        return text
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{name}-*.txt"):
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass
    return text
