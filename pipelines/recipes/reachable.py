"""Can the model be fetched? Checked once at plan time, before any work, in a few seconds.

Without this, a model that cannot be fetched fails inside ``from_pretrained`` after
about 27 s of retries, as a 30-line ``OSError``. Here one HEAD request for the
model's ``config.json`` (no retries, a short timeout) tells the causes apart, and
each gets a message naming the cause and the fix:

* no network: ``HF_HUB_OFFLINE`` is set, or the Hub cannot be reached, and the model is not cached;
* a gated repository without ``HF_TOKEN`` (or whose licence the token's user has not accepted);
* an unknown Hub id (or a private one without a token), or an unknown revision;
* a local path that does not exist, or has no ``config.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipelines.errors import QevalError
from pipelines.recipes.schema import ModelRecipe

log = logging.getLogger(__name__)

# One HEAD request: the Hub answers in well under a second when it is reachable.
HUB_TIMEOUT_S = 5.0
EMBEDDED_PREFIX = "embedded:"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_local_source(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def cached_config(repo_id: str, revision: str | None) -> str | None:
    """The cached config.json of a Hub model, if the local cache has it."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None)
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def check_model_reachable(recipe: ModelRecipe) -> str | None:
    """Raise QevalError (exit code 2) naming the cause and the fix when the model cannot be fetched.

    For a Hub model, return the commit its revision points at now (the Hub's answer, else the
    local cache's), so that the plan pins it: every stage then loads, and keys, the same weights
    even if the branch moves during or after the sweep.
    """
    source = recipe.source
    if source.startswith(EMBEDDED_PREFIX):
        return None  # converted locally by `qeval prepare`
    if is_local_source(source):
        check_local_checkpoint(Path(source).expanduser(), recipe.name)
        return None
    return check_hub_model(source, recipe.revision, recipe.name)


def check_local_checkpoint(path: Path, name: str) -> None:
    if not path.exists():
        raise QevalError(f"model {name}: local path {path} does not exist. Fix the path in --model or the "
                         "model recipe's source, or give a Hub id (org/name).")
    if not (path / "config.json").is_file():
        raise QevalError(f"model {name}: {path} has no config.json, so it is not a transformers checkpoint. "
                         "Point at the folder that save_pretrained wrote (it holds config.json and the weights).")


def check_hub_model(repo_id: str, revision: str | None, name: str) -> str | None:
    """The commit of ``revision`` (None where neither the Hub nor the cache names one)."""
    from huggingface_hub import get_hf_file_metadata, get_token, hf_hub_url

    cached = cached_config(repo_id, revision)
    if _truthy("HF_HUB_OFFLINE"):
        if cached:
            return snapshot_commit(cached)
        raise QevalError(offline_message(repo_id, "HF_HUB_OFFLINE is set"))
    token = get_token()
    url = hf_hub_url(repo_id, "config.json", revision=revision, endpoint=hub_endpoint())
    try:
        metadata = get_hf_file_metadata(url, token=token or None, timeout=HUB_TIMEOUT_S, retry_on_errors=False)
    except Exception as exc:
        message = classify_hub_error(exc, repo_id, revision, has_token=bool(token))
        if message is None:
            raise
        if cached and message.startswith("no network"):
            log.warning("%s: the Hub is not reachable (%s); using the cached copy", name, exc)
            return snapshot_commit(cached)
        raise QevalError(message) from exc
    return metadata.commit_hash


def snapshot_commit(cached_file: str) -> str | None:
    """The commit of a file in the Hub cache: its path is .../snapshots/<commit>/<file>."""
    folder = Path(cached_file).parent
    return folder.name if folder.parent.name == "snapshots" and len(folder.name) == 40 else None


def offline_message(repo_id: str, why: str) -> str:
    return (f"no network: {why}, and {repo_id} is not in the local Hub cache. Fix: run once where the Hub "
            f"is reachable (unset HF_HUB_OFFLINE), or `hf download {repo_id}` and copy the cache "
            "(HF_HOME), or give a local checkpoint directory as --model.")


def classify_hub_error(exc: Exception, repo_id: str, revision: str | None, *, has_token: bool) -> str | None:
    """The cause and fix for an exception of a Hub request; None for one this does not know."""
    import httpx
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{hub_endpoint()}/{repo_id}"
    # GatedRepoError is a RepositoryNotFoundError: test it first.
    if isinstance(exc, GatedRepoError):
        if not has_token:
            return (f"gated repository: {repo_id} needs an accepted licence and a token, and HF_TOKEN is not set. "
                    f"Fix: accept the licence at {page}, then set HF_TOKEN=<your token> (or `hf auth login`).")
        return (f"gated repository: the token in use has no access to {repo_id} yet. Fix: accept the licence "
                f"at {page} with the account of HF_TOKEN, and wait for the approval e-mail.")
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision!r} does not exist in {repo_id}. Fix: the model recipe's revision (a branch, tag or commit)."
    if isinstance(exc, RepositoryNotFoundError):
        private = "" if has_token else " (or a private one: set HF_TOKEN)"
        return (f"unknown Hub id {repo_id!r}: no such model on {hub_endpoint()}{private}. Fix: check the spelling "
                "(org/name); `qeval list models` shows the recipes.")
    if isinstance(exc, EntryNotFoundError):
        return f"{repo_id} has no config.json: it is not a transformers model repository. Fix: give a model's Hub id."
    if isinstance(exc, OfflineModeIsEnabled):
        return offline_message(repo_id, "offline mode is enabled")
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return offline_message(repo_id, f"cannot reach the Hub at {hub_endpoint()} ({type(exc).__name__}: {exc})")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", "?") if getattr(exc, "response", None) is not None else "?"
        return f"the Hub answered HTTP {status} for {repo_id}: {exc}. Fix: retry later, or check HF_ENDPOINT."
    return None
