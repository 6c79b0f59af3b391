"""A server the user already runs: qeval only drives load against its base URL.

What it serves is checked, not assumed: the model must be the one named (serve.endpoint_model)
or the only one listed, and where the server reports its geometry (llama.cpp's vocabulary and
width) it must be the scheme's. The served entry is part of the serve key, so numbers measured
before a redeploy are not reused after it. An API key comes from the environment variable that
serve.api_key_env names and is sent on every request; it is never stored.
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.engines.base import EngineLaunch
from pipelines.errors import QevalError

LIST_TIMEOUT_S = 10


def api_key(serve) -> str | None:
    """The endpoint's API key, from the variable serve.api_key_env names (None without one)."""
    if not serve.api_key_env:
        return None
    key = os.environ.get(serve.api_key_env, "").strip()
    if not key:
        raise QevalError(f"serve.api_key_env names {serve.api_key_env}, which is not set: "
                         f"export {serve.api_key_env}=<the endpoint's API key>")
    return key


def auth_headers(serve) -> dict[str, str]:
    key = api_key(serve)
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_models(serve) -> list[dict[str, Any]]:
    """The entries of the endpoint's /v1/models."""
    import requests

    url = serve.endpoint.rstrip("/") + "/v1/models"
    try:
        response = requests.get(url, headers=auth_headers(serve), timeout=LIST_TIMEOUT_S, verify=serve.verify_tls)
    except requests.RequestException as exc:
        raise QevalError(f"cannot list the models of the endpoint {serve.endpoint} ({type(exc).__name__}: {exc}); "
                         "check the URL (and serve.verify_tls for a self-signed certificate)") from None
    if response.status_code in (401, 403):
        raise QevalError(f"the endpoint {serve.endpoint} refused the request (HTTP {response.status_code}): put its "
                         "API key in an environment variable and name it in serve.api_key_env")
    try:
        response.raise_for_status()
        return list(response.json()["data"])
    except Exception as exc:  # not OpenAI-compatible
        raise QevalError(f"the endpoint {serve.endpoint} did not list its models at /v1/models "
                         f"(HTTP {response.status_code}: {exc}); is it an OpenAI-compatible server?") from None


def served_entry(serve) -> dict[str, Any]:
    """The /v1/models entry of the model to load: the one named, or the only one listed."""
    entries = served_models(serve)
    ids = [str(e.get("id")) for e in entries]
    if serve.endpoint_model:
        if serve.endpoint_model not in ids:
            raise QevalError(f"the endpoint {serve.endpoint} does not serve {serve.endpoint_model!r}; it serves "
                             f"{', '.join(ids) or 'nothing'}. Fix serve.endpoint_model, or point at the server of "
                             "this scheme")
        return entries[ids.index(serve.endpoint_model)]
    if len(entries) != 1:
        raise QevalError(f"the endpoint {serve.endpoint} serves {len(entries)} models "
                         f"({', '.join(ids) or 'none'}): name this scheme's in serve.endpoint_model")
    return entries[0]


def identity(entry: dict[str, Any]) -> dict[str, Any]:
    """What of a /v1/models entry tells one deployment from another (for the key and serve.json)."""
    keep = ("id", "root", "owned_by", "created", "max_model_len", "meta")
    return {k: entry[k] for k in keep if k in entry}


def check_geometry(entry: dict[str, Any], config) -> str:
    """Refuse an endpoint whose reported geometry is not the scheme's model; say what was checked."""
    meta = entry.get("meta") or {}
    checks = {"n_vocab": getattr(config, "vocab_size", None), "n_embd": getattr(config, "hidden_size", None)}
    compared = {k: (meta[k], want) for k, want in checks.items() if k in meta and want is not None}
    wrong = [f"{k} {got} (this model: {want})" for k, (got, want) in compared.items() if int(got) != int(want)]
    if wrong:
        raise QevalError(f"the endpoint serves another model: {entry.get('id')!r} reports {', '.join(wrong)}. "
                         "Point serve.endpoint at the server of this scheme")
    if compared:
        return f"checked: {', '.join(f'{k} {got}' for k, (got, _) in compared.items())} match the model"
    return "not checked: the endpoint reports no geometry (only its model name was matched)"


def launch(*, serve, **_) -> EngineLaunch:
    url = serve.endpoint.rstrip("/")
    entry = served_entry(serve)
    return EngineLaunch(engine="endpoint", version="external", command=None, model_name=str(entry["id"]),
                        health_path="/v1/models", base_url=url,
                        settings={"endpoint": url, "served_model": identity(entry), "verify_tls": serve.verify_tls,
                                  "authenticated": bool(serve.api_key_env)},
                        served=entry, api_key=api_key(serve), verify_tls=serve.verify_tls)
