"""MLflow metrics of the serve stage (serve/serve.json), under stable names.

``serve.capacity`` and ``serve.goodput_rps`` are at the recipe's SLO; ``serve.usd_per_m_tokens``
at that capacity and the recipe's hardware price. Per level ``c<N>``: throughput and p99s.
"""

from __future__ import annotations

from evals.results import ServeResult
from pipelines.rundir import SchemeDir

SERVE_METRIC_NAMES: dict[str, tuple[str, str]] = {
    "serve.capacity": ("serve/serve.json", "highest concurrency whose p99s meet every SLO (0: none does)"),
    "serve.goodput_rps": ("serve/serve.json", "requests/s at that capacity (requests meeting the SLO)"),
    "serve.usd_per_m_tokens": ("serve/serve.json", "$ per million output tokens at capacity and the hardware price"),
    "serve.output_tok_s_at_capacity": ("serve/serve.json", "output tokens/s at capacity"),
    "serve.kv_sequences": ("serve/serve.json", "sequences of the serve context length whose KV cache fits in "
                                               "(memory - weights - overhead)"),
    "serve.c<N>.output_tok_s": ("serve/serve.json", "output tokens/s at N concurrent streams"),
    "serve.c<N>.ttft_ms_p99": ("serve/serve.json", "p99 time to first token at N streams, ms"),
    "serve.c<N>.itl_ms_p99": ("serve/serve.json", "p99 inter-token latency at N streams, ms"),
}


def serve_metrics(sdir: SchemeDir) -> dict[str, float]:
    data = ServeResult.read_if_present(sdir.serve_dir / ServeResult.FILE)
    if data is None:
        return {}
    cap, cost = data.capacity, data.cost
    raw = {"serve.capacity": cap["capacity_concurrency"], "serve.goodput_rps": cap["goodput_rps"],
           "serve.usd_per_m_tokens": cost.get("usd_per_m_output_tokens"),
           "serve.output_tok_s_at_capacity": cap["output_tokens_per_s_at_capacity"],
           "serve.kv_sequences": cost.get("concurrent_sequences")}
    for level in data.levels:
        c = level["concurrency"]
        raw[f"serve.c{c}.output_tok_s"] = level["output_tokens_per_s"]
        raw[f"serve.c{c}.ttft_ms_p99"] = (level.get("ttft_ms") or {}).get("p99")
        raw[f"serve.c{c}.itl_ms_p99"] = (level.get("itl_ms") or {}).get("p99")
    return {k: float(v) for k, v in raw.items() if isinstance(v, int | float)}
