"""Credential detection and redaction for everything qeval sends to a tracking server."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"

_CREDENTIAL_WORDS = {"secret", "password", "passwd", "auth", "credential", "credentials",
                     "authorization", "apikey", "privatekey"}
_CREDENTIAL_PHRASES = ("api_key", "private_key", "access_key", "secret_key")


def looks_like_credential(name: str) -> bool:
    """Return True for names such as ``HF_TOKEN``, ``hub_token``, ``apiKey``, ``db.password``.

    ``token`` counts only as the last word of a name segment, so
    ``token_ids_sha256``, ``n_tokens`` and ``tokenizer`` are not credentials.
    """
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    for segment in re.split(r"[./:\s]+", snake):
        words = [w for w in re.split(r"[^a-z0-9]+", segment) if w]
        if not words:
            continue
        joined = "_".join(words)
        if words[-1] == "token" or any(w in _CREDENTIAL_WORDS for w in words):
            return True
        if any(phrase in joined for phrase in _CREDENTIAL_PHRASES):
            return True
    return False


def env_secrets() -> list[str]:
    """Values of environment variables whose names look like credentials (long enough to matter)."""
    trivial = {"true", "false", "none", "null", "yes", "no"}
    values = {
        value for name, value in os.environ.items()
        if looks_like_credential(name) and len(value) >= 6 and value.lower() not in trivial
    }
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_params(params: Mapping[str, str], secrets: Sequence[str]) -> dict[str, str]:
    """Drop credential-named params and redact values that contain an environment secret."""
    out = {}
    for key, value in params.items():
        if looks_like_credential(key):
            log.info("param %s looks like a credential; not logged", key)
            continue
        out[key] = redact_text(value, secrets)
    return out


def redact_structure(data: Any, secrets: Sequence[str]) -> Any:
    """Return ``data`` with credential-named keys and environment secrets replaced by a marker."""
    if isinstance(data, Mapping):
        return {
            k: (REDACTED if looks_like_credential(str(k)) and v not in (None, "") else redact_structure(v, secrets))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact_structure(v, secrets) for v in data]
    if isinstance(data, str):
        return redact_text(data, secrets)
    return data
