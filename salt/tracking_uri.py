"""Tracking-store URIs and run-folder paths, without importing MLflow or Lightning.

- Which store: ``--tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``
  (root = ``trainer.default_root_dir``). MLflow ≥ 3.13 refuses the plain file store.
- ``redact_uri``: a URI as it may be written anywhere (``run.json``, MLflow params, the saved
  config, logs): user and password removed from the network location, secret-looking query
  values masked; ``redact_text`` does the same to every URI inside a message. Credentials belong in MLflow's own environment variables
  (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN``) or a
  ``.pgpass`` file, which salt never records.
- Paths that survive moving ``runs/``: a sqlite store lives in the root that also holds the run
  folders, so a run folder is recorded relative to the store's folder (``store_dir``) and
  checkpoints relative to their run folder; ``resolve_recorded`` turns them back into paths,
  preferring the relative form when it exists.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token", "key", "signature", "sig", "auth")
_USERINFO = re.compile(r"(\b[a-zA-Z][\w+.-]*://)[^/\s@]+@")
_KEYS = "|".join(_SECRET_KEYS)
_SECRET_QUERY = re.compile(rf"([?&][\w.-]*(?:{_KEYS})[\w.-]*=)[^&\s#\"')]+", re.I)


def default_tracking_uri(root: str | os.PathLike) -> str:
    """``sqlite:///<abs root>/mlflow.db`` (the directory is created)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(flag: str | None, root: str | os.PathLike) -> str:
    """The store to use: ``--tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the sqlite default."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def is_remote(uri: str) -> bool:
    """True for a tracking server (``http(s)://``, ``databricks``), False for a local database."""
    return uri.startswith(("http://", "https://", "databricks"))


def redact_uri(uri: str | None) -> str | None:
    """``uri`` without credentials: ``https://u:p@host/x?token=t`` -> ``https://host/x?token=***``.

    Anything without a user part or a secret-looking query value is returned unchanged (so
    ``sqlite:////abs/path`` keeps its four slashes).
    """
    if not uri or "://" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = netloc.rpartition("@")[2]
    tail, qmark, query = tail.partition("?")
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(any(s in k.lower() for s in _SECRET_KEYS) for k, _ in pairs):
            masked = [
                (k, "***" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in pairs
            ]
            query = urllib.parse.urlencode(masked, safe="*")
    return f"{scheme}://{netloc}{slash}{tail}{qmark}{query}"


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with every URI in it redacted: MLflow's own
    exceptions quote the full request URL, credentials included."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1", text))


def store_dir(uri: str | None) -> Path | None:
    """The folder of a ``sqlite:///`` store file (None for any other store)."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :]).resolve().parent


def relative_to(path: str | os.PathLike, base: str | os.PathLike | None) -> str | None:
    """``path`` relative to ``base`` (POSIX separators) when it lies below it, else None."""
    if base is None:
        return None
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return None


def resolve_recorded(
    absolute: str | None, relative: str | None, base: str | os.PathLike | None
) -> Path | None:
    """A recorded location: ``base / relative`` if that exists (the folder moved together with
    its store), else ``absolute`` if that exists, else None."""
    if relative and base is not None:
        candidate = Path(base) / relative
        if candidate.exists():
            return candidate
    if absolute and Path(absolute).exists():
        return Path(absolute)
    return None
