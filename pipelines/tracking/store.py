"""Where the tracking store is, how to reach it, and how to tell an outage from an error.

The default store follows the same rule as ``runs/``: it is relative to the
current working directory (``./mlflow.db``, artifacts in ``./mlartifacts``),
and ``MLFLOW_TRACKING_URI`` overrides it as ``QEVAL_RUNS_DIR`` overrides runs/.
So a sweep started in a directory keeps its results and its runs side by side.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

EXPERIMENT_ENV = "QEVAL_EXPERIMENT"
DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACTS_DIRNAME = "mlartifacts"
SYNC_COMMAND = "qeval sync"
SQLITE_PREFIX = "sqlite:///"

# The client retries a refused connection 7 times with exponential backoff
# (minutes); a sweep should notice an outage in seconds. Set only when the user
# has not chosen values, and only while this package talks to a server.
FAST_FAIL_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# Messages of the exceptions MLflow's REST client wraps a network failure in.
UNREACHABLE_MESSAGES = (
    "max retries exceeded",
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remotedisconnected",
    "timed out",
    "timeout exception",
    "name or service not known",
    "temporary failure in name resolution",
)
UNREACHABLE_ERROR_CODES = {"TEMPORARILY_UNAVAILABLE"}


def tracking_uri() -> str:
    """Return ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.db`` in the current working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"{SQLITE_PREFIX}{Path.cwd().resolve() / DEFAULT_DB_NAME}"


def experiment_name(model: str, experiment: str | None = None) -> str:
    """Return the experiment for ``model``: the argument, else ``QEVAL_EXPERIMENT``, else ``qeval/<model>``."""
    return experiment or os.environ.get(EXPERIMENT_ENV, "").strip() or f"qeval/{model}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths from the cwd, as SQLAlchemy reads them)."""
    if not uri.startswith(SQLITE_PREFIX) or uri.endswith(":memory:"):
        return None
    return (Path.cwd() / uri.removeprefix(SQLITE_PREFIX)).resolve()


def artifact_location(uri: str) -> str | None:
    """Keep a SQLite store's artifacts beside its database (MLflow's default is ./mlruns of the cwd)."""
    db_path = sqlite_path(uri)
    return None if db_path is None else str(db_path.parent / DEFAULT_ARTIFACTS_DIRNAME)


def missing_local_store(uri: str) -> Path | None:
    """The path of a local store (SQLite file, file store folder) that does not exist, else None.

    Reading must not create a store: opening a missing SQLite URI would make an
    empty database (and take seconds of schema migrations).
    """
    db_path = sqlite_path(uri)
    if db_path is not None:
        return None if db_path.is_file() else db_path
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        folder = Path(urlsplit(uri).path if scheme == "file" else uri)
        return None if folder.is_dir() else folder
    return None


def display_uri(uri: str) -> str:
    """``uri`` without a password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def fast_fail_http(uri: str) -> Iterator[None]:
    """Lower MLflow's HTTP retries and timeout (unless the user set them) while talking to ``uri``."""
    if not is_remote(uri):
        yield
        return
    added = [k for k in FAST_FAIL_HTTP_ENV if k not in os.environ]
    for key in added:
        os.environ[key] = FAST_FAIL_HTTP_ENV[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def is_unreachable(exc: BaseException) -> bool:
    """Tell a network outage (retry later) from a real error (raise)."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | ConnectionError | TimeoutError | socket.timeout):
            return True
        if getattr(current, "error_code", None) in UNREACHABLE_ERROR_CODES:
            return True
        if type(current).__module__.startswith(("mlflow", "urllib3", "requests")):
            message = str(current).lower()
            if any(pattern in message for pattern in UNREACHABLE_MESSAGES):
                return True
        current = current.__cause__ or current.__context__
    return False


def short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def filter_value(value: str) -> str | None:
    """``value`` quoted for an MLflow search filter; None when it cannot be quoted."""
    return None if "'" in value else f"'{value}'"
