"""Load an OpenAI-compatible server with GuideLLM, one concurrency level at a time.

GuideLLM (pinned) generates synthetic prompts of the requested token-length distribution with
the model's own tokenizer (a local checkpoint directory: nothing is fetched), sends them at a
fixed number of concurrent streams and reports per-request timings. qeval runs one GuideLLM
benchmark per level, in this process, so that it can stop the sweep as soon as the server is
over-saturated (GuideLLM's own `over_saturation` constraint stops a level, not the sweep).

Loopback traffic never goes through a proxy: before GuideLLM starts, this
process's NO_PROXY/no_proxy gain 127.0.0.1, localhost and ::1 (GuideLLM's httpx client, and the
worker process it forks, read them), and the warm-up requests to a loopback server use a
session that ignores HTTP(S)_PROXY. A remote ``--endpoint`` still goes through the user's proxy.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PERCENTILES = ("p50", "p90", "p99")
# GuideLLM metric -> the name in serve.json (units in the name).
METRICS = {
    "time_to_first_token_ms": "ttft_ms",
    "inter_token_latency_ms": "itl_ms",
    "time_per_output_token_ms": "tpot_ms",
    "request_latency": "e2e_ms",  # seconds in GuideLLM; converted below
}


class LoadError(RuntimeError):
    """The load generator could not run a level (the server died, or every request failed)."""


@dataclass(frozen=True)
class LoadSpec:
    """One level's load: where to send it and what to send."""

    base_url: str
    model_name: str
    tokenizer_dir: str
    request_format: str
    prompt_tokens: int
    prompt_tokens_stdev: int
    output_tokens: int
    output_tokens_stdev: int
    exact_output_lengths: bool
    requests: int
    max_seconds: float
    seed: int = 0
    api_key: str | None = None  # a Bearer token for an endpoint that needs one; never logged
    verify_tls: bool = True  # GuideLLM's own default is False: https load would not check the server


def _kv(**items: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in items.items() if v is not None)


def guidellm_args(spec: LoadSpec, streams: int, out_json: Path) -> list[str]:
    """The `guidellm run` arguments of one concurrency level.

    The backend goes as JSON, which GuideLLM parses as it parses key=value: a URL or model
    name with "," or "=" in it stays one value.
    """
    backend = dict(kind="openai_http", target=spec.base_url, model=spec.model_name,
                   request_format=spec.request_format, timeout=max(60.0, spec.max_seconds), verify=spec.verify_tls)
    if spec.api_key:
        backend["api_key"] = spec.api_key
    # A stdev of 0 (fixed lengths) is GuideLLM's None: it refuses 0.
    data = dict(kind="synthetic_text", prompt_tokens=spec.prompt_tokens, prompt_tokens_stdev=spec.prompt_tokens_stdev or None,
                prompt_tokens_min=1, prompt_tokens_max=spec.prompt_tokens + 3 * spec.prompt_tokens_stdev)
    if spec.exact_output_lengths:
        data.update(output_tokens=spec.output_tokens, output_tokens_stdev=spec.output_tokens_stdev or None,
                    output_tokens_min=1, output_tokens_max=spec.output_tokens + 3 * spec.output_tokens_stdev)
    else:
        # The engine rejects GuideLLM's `ignore_eos`: cap every output at the mean length instead.
        backend["max_tokens"] = spec.output_tokens
    return [
        "run", "--backend", json.dumps(backend), "--profile", "kind=concurrent",
        "--override", "profile.streams", str(streams),
        "--constraint", _kv(kind="max_requests", count=spec.requests),
        "--constraint", _kv(kind="max_duration", seconds=spec.max_seconds),
        "--tokenizer", _kv(kind="hf_auto", model=spec.tokenizer_dir),
        "--data", _kv(**data), "--seed", _kv(kind="static", value=spec.seed),
        "--output", _kv(kind="json", path=out_json), "--disable-console",
    ]


# One GuideLLM worker process, forked from a forkserver: the defaults spawn up to 10 fresh
# interpreters per level (seconds each on 2 cores) to send a handful of async requests.
GUIDELLM_ENV = {"GUIDELLM__MAX_WORKER_PROCESSES": "1", "GUIDELLM__MP_CONTEXT_TYPE": "forkserver"}


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def bypass_proxy_for_loopback(environ: MutableMapping[str, str] | None = None) -> str:
    """Add the loopback hosts to NO_PROXY and no_proxy (both set, to the same list, the user's entries
    kept first), so that no HTTP client sends 127.0.0.1 traffic to HTTP(S)_PROXY; return the value."""
    environ = os.environ if environ is None else environ
    entries: list[str] = []
    for key in ("NO_PROXY", "no_proxy"):
        for item in (environ.get(key) or "").split(","):
            if item.strip() and item.strip() not in entries:
                entries.append(item.strip())
    entries += [host for host in LOOPBACK_HOSTS if host not in entries]
    value = ",".join(entries)
    environ["NO_PROXY"] = environ["no_proxy"] = value
    return value


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def http_session(url: str):
    """A requests session for ``url``: one that ignores proxy settings when it is a loopback address."""
    import requests

    session = requests.Session()
    if is_loopback(url):
        session.trust_env = False
    return session


def run_level(spec: LoadSpec, streams: int, out_json: Path) -> dict[str, Any]:
    """Drive one level with GuideLLM in this process; return its parsed statistics."""
    for key, value in GUIDELLM_ENV.items():  # read when guidellm.settings is first imported
        os.environ.setdefault(key, value)
    # Before GuideLLM builds its httpx client or forks its worker: loopback load skips any proxy.
    bypass_proxy_for_loopback()
    from guidellm.__main__ import cli

    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.unlink(missing_ok=True)
    args = guidellm_args(spec, streams, out_json)
    shown = guidellm_args(replace(spec, api_key="***"), streams, out_json) if spec.api_key else args
    log.info("guidellm %s", " ".join(shown))
    start = time.perf_counter()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            cli.main(args=args, standalone_mode=False)
    except SystemExit as exc:  # click's exit on bad arguments
        raise LoadError(f"guidellm exited with {exc.code}: {sink.getvalue()[-2000:]}") from None
    except Exception as exc:  # unreachable backend, validation, a crash inside the generator
        raise LoadError(f"guidellm failed at {streams} streams: {type(exc).__name__}: {exc}") from None
    if not out_json.is_file():
        raise LoadError(f"guidellm wrote no report for {streams} streams: {sink.getvalue()[-2000:]}")
    report = json.loads(out_json.read_text())
    return parse_level(report["benchmarks"][-1], streams, time.perf_counter() - start)


def _stat(metrics: dict, name: str, scale: float = 1.0) -> dict[str, float | None]:
    dist = (metrics.get(name) or {}).get("successful") or {}
    if not dist.get("count"):  # GuideLLM reports zeros when no request completed: nothing was measured
        return {p: None for p in (*PERCENTILES, "mean")}
    pct = dist.get("percentiles") or {}
    out = {p: (pct[p] * scale if pct.get(p) is not None else None) for p in PERCENTILES}
    out["mean"] = dist["mean"] * scale if dist.get("mean") is not None else None
    return out


def parse_level(bench: dict[str, Any], streams: int, wall_s: float) -> dict[str, Any]:
    """One GuideLLM benchmark -> the per-level record of serve.json."""
    m = bench["metrics"]
    req = bench["requests"]
    ok, errored, incomplete = len(req["successful"]), len(req["errored"]), len(req["incomplete"])
    duration = float(bench.get("duration") or wall_s)
    out_tokens = sum((r.get("output_metrics") or {}).get("text_tokens") or 0 for r in req["successful"])
    errors = sorted({str(r.get("info", {}).get("error") or r.get("error") or "")[:300] for r in req["errored"]})
    level = {
        "concurrency": streams,
        "requests_ok": ok, "errors": errored, "incomplete": incomplete,
        "error_messages": [e for e in errors if e][:3],
        "duration_s": round(duration, 3),
        "requests_per_s": ok / duration if duration > 0 else 0.0,
        "output_tokens_per_s": out_tokens / duration if duration > 0 else 0.0,
        "output_tokens": out_tokens,
    }
    for gname, name in METRICS.items():
        level[name] = _stat(m, gname, 1000.0 if gname == "request_latency" else 1.0)
    return level


def is_over_saturated(previous: dict[str, Any], current: dict[str, Any], gain: float) -> bool:
    """Throughput no longer rises (by more than ``gain``) while p99 latency climbs."""
    tp0, tp1 = previous["output_tokens_per_s"], current["output_tokens_per_s"]
    lat0, lat1 = previous["e2e_ms"]["p99"], current["e2e_ms"]["p99"]
    if tp0 <= 0 or lat0 is None or lat1 is None:
        return current["requests_ok"] == 0
    return tp1 < tp0 * (1 + gain) and lat1 > lat0


def warm_up(base_url: str, model_name: str, request_format: str, n: int, max_tokens: int = 8, *,
            api_key: str | None = None, verify_tls: bool = True) -> float:
    """Send ``n`` short requests before measuring (the first ones after start pay one-time costs)."""
    start = time.perf_counter()
    with http_session(base_url) as session:  # a loopback server: no proxy
        session.verify = verify_tls
        if api_key:
            session.headers["Authorization"] = f"Bearer {api_key}"
        for _ in range(n):
            body: dict[str, Any] = {"model": model_name, "max_tokens": max_tokens}
            if request_format == "/v1/completions":
                body["prompt"] = "The quick brown fox jumps over the lazy dog."
            else:
                body["messages"] = [{"role": "user", "content": "Say hello."}]
            r = session.post(base_url + request_format, json=body, timeout=600)
            if r.status_code != 200:
                raise LoadError(f"warm-up request failed with HTTP {r.status_code}: {r.text[:500]}")
    return time.perf_counter() - start


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
