"""A real sweep of the llama.cpp schemes on the embedded model: quantize, evaluate, benchmark, serve, sign off.

`qeval run --suite smoke --schemes gguf-f16,gguf-q4_k_m` (with the baseline) through the same
stages as every other scheme, checked on what they wrote. Slow (about 4 minutes on 2 cores);
skipped where llama.cpp is not built.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import run_qeval
from test_gguf import needs_llamacpp

pytestmark = [pytest.mark.slow, needs_llamacpp]

MODEL = "smollm2-135m"
GGUF = ["gguf-f16", "gguf-q4_k_m"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_sweep")
    env = {"QEVAL_RUNS_DIR": str(root / "runs"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    proc = run_qeval("run", "--model", MODEL, "--suite", "smoke", "--schemes", ",".join(GGUF), "--quiet", env=env)
    return {"proc": proc, "runs": root / "runs" / MODEL}


def _json(sweep, scheme: str, path: str) -> dict:
    return json.loads((sweep["runs"] / scheme / path).read_text())


def test_every_stage_of_the_gguf_schemes_finished(sweep):
    assert sweep["proc"].returncode in (0, 1, 3), sweep["proc"].stdout[-3000:] + sweep["proc"].stderr[-3000:]
    for scheme in ["baseline", *GGUF]:
        stages = _json(sweep, scheme, "manifest.json")["stages"]
        assert {s: e["status"] for s, e in stages.items()} == dict.fromkeys(
            ("quantize", "evaluate", "benchmark", "serve"), "done"), (scheme, stages)


def test_quantize_records_llamacpp_type_bits_and_tensors(sweep):
    q4 = _json(sweep, "gguf-q4_k_m", "quantize/quantize.json")
    engine = q4["engine"]
    assert engine["engine"] == "llama.cpp" and engine["type"] == "Q4_K_M" and engine["llama_cpp_commit"]
    assert 4.0 < engine["bits_per_weight"] < 8.0
    assert (sweep["runs"] / "gguf-q4_k_m" / "quantize" / "model" / "model.gguf").stat().st_size == engine["gguf_bytes"]
    assert {"Q4_K", "F32"} <= {t["type"] for t in engine["tensors"]}
    assert q4["disk_bytes"] < 0.5 * q4["baseline_disk_bytes"]
    assert (sweep["runs"] / "gguf-q4_k_m" / "quantize" / "layer_errors.csv").is_file()
    assert _json(sweep, "gguf-f16", "quantize/quantize.json")["engine"]["type"] == "F16"


def test_perplexity_scores_the_baselines_token_ids_and_f16_matches_it(sweep):
    base = _json(sweep, "baseline", "eval/perplexity.json")["wikitext2"]
    f16 = _json(sweep, "gguf-f16", "eval/perplexity.json")["wikitext2"]
    q4 = _json(sweep, "gguf-q4_k_m", "eval/perplexity.json")["wikitext2"]
    assert f16["token_ids_sha256"] == base["token_ids_sha256"] == q4["token_ids_sha256"]
    # bf16 baseline against llama.cpp F16: within bf16 rounding (see test_gguf.py for the tolerance)
    assert abs(math.log(f16["ppl"] / base["ppl"])) < 5e-3, (f16["ppl"], base["ppl"])
    assert q4["ppl"] > f16["ppl"]


def test_tasks_and_generation_ran_on_llamacpp_with_the_same_samples(sweep):
    base = _json(sweep, "baseline", "eval/tasks.json")
    q4 = _json(sweep, "gguf-q4_k_m", "eval/tasks.json")
    assert set(q4["results"]) == set(base["results"]) == {"arc_easy", "gsm8k"}
    assert q4["n_samples"] == base["n_samples"]
    rows = [json.loads(line) for line in (sweep["runs"] / "gguf-q4_k_m" / "eval" / "samples" / "gsm8k.jsonl")
            .read_text().splitlines()]
    assert len(rows) == 2 and all(row["generation"] for row in rows)  # text generated through llama.cpp
    assert q4["generation"]["gsm8k"]["collapse"]["n"] == 2


def test_fidelity_has_the_gguf_f16_noise_floor(sweep):
    fid = _json(sweep, "gguf-q4_k_m", "eval/fidelity.json")
    others = fid["noise_floor"]["wikitext2"]["others"]
    (label, floor), = others.items()
    assert label.startswith("gguf-f16.")
    # the engine alone moves the distribution far less than Q4_K_M does
    assert floor["kl_base_scheme"]["mean"] < fid["datasets"]["wikitext2"]["kl_base_scheme"]["mean"]


def test_llama_bench_and_llama_server_measured_it(sweep):
    speed = _json(sweep, "gguf-q4_k_m", "bench/speed.json")
    bs1 = next(r for r in speed["results"] if r["batch_size"] == 1)
    assert bs1["status"] == "ok" and bs1["decode_tok_s"]["median"] > 0
    assert speed["what_ran"]["engine"] == "llama.cpp"
    served = _json(sweep, "gguf-q4_k_m", "serve/serve.json")
    assert served["engine"] == "llama.cpp" and served["levels"][0]["requests_ok"] >= 1


def test_signoff_judges_them_with_the_cross_engine_caveat(sweep):
    signoff = json.loads((sweep["runs"] / "signoff.json").read_text())
    assert set(GGUF) <= set(signoff["verdicts"]) and not signoff["not_judged"]
    assert any("crosses engines" in c and "gguf-q4_k_m" in c for c in signoff["caveats"])
    assert "crosses engines" in (sweep["runs"] / "signoff.md").read_text()
