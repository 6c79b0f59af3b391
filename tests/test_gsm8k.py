"""GSM8K as a local lm-eval task: lm-eval's own definition on local data, both extractions, collapse detectors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from evals.generation import collapse_summary, generation_rows, rep_ngram_rate
from evals.harness import BUILTIN_TASKS_DIR, run_tasks

LM_EVAL_GSM8K = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks" / "gsm8k" / "gsm8k.yaml"


def test_the_local_task_is_lm_evals_gsm8k_on_local_data():
    ours = yaml.safe_load((BUILTIN_TASKS_DIR / "qeval_gsm8k.yaml").read_text())
    theirs = yaml.safe_load(LM_EVAL_GSM8K.read_text())
    for key in ("output_type", "doc_to_text", "doc_to_target", "metric_list", "filter_list", "num_fewshot",
                "fewshot_split", "repeats"):
        assert ours[key] == theirs[key], key
    assert ours["generation_kwargs"]["until"] == theirs["generation_kwargs"]["until"]
    assert ours["generation_kwargs"]["do_sample"] is False


def test_repeated_ngrams_measure_looping_text():
    assert rep_ngram_rate("the cat sat on the mat and then left") == 0.0
    assert rep_ngram_rate("a b c d " * 20) > 0.9
    assert rep_ngram_rate("") == 0.0


@pytest.fixture(scope="module")
def gsm8k_run(tiny_llama_dir, data_dir, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    out = tmp_path_factory.mktemp("gsm8k")
    summary = run_tasks(model, tok, ["gsm8k", "arc_easy"], out_dir=out, data_dir=data_dir,
                        limit={"gsm8k": 3, "arc_easy": 4}, show_progress=False,
                        generation={"max_gen_toks": 12, "repeats": 1, "temperature": 0.7, "chat_template": "auto"})
    return out, summary


def test_gsm8k_rows_keep_both_extractions_and_the_detectors(gsm8k_run):
    out, summary = gsm8k_run
    rows = [json.loads(line) for line in (out / summary["samples"]["gsm8k"]).read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert set(row["filters"]) == {"strict-match", "flexible-extract"}
        assert row["acc"] == row["exact_match_strict"] and "#### " in row["target"]
        assert row["truncated"] == int(row["n_gen_tokens"] >= 11)  # re-tokenized: about the budget
        assert 0 <= row["rep_ngram_rate"] <= 1 and row["no_number"] in (0, 1)
    gen = summary["generation"]["gsm8k"]
    # the tiny tokenizer has no chat template: none applied; greedy; the suite's budget recorded
    assert gen["greedy"] and gen["chat_template"] is False and gen["generation_kwargs"]["max_gen_toks"] == 12
    assert gen["num_fewshot"] == 5 and gen["collapse"]["n"] == 3
    assert "strict-match" in json.dumps(summary["results"]["gsm8k"]) or summary["results"]["gsm8k"]
    # the log-likelihood task in the same run kept its own settings and rows
    assert "arc_easy" not in summary["generation"] and summary["n_samples"]["arc_easy"] == 4
    assert summary["mde_points"]["gsm8k"] == pytest.approx(100 * 1.96 * (0.25 / 3) ** 0.5, rel=1e-3)


def test_collapse_summary_on_lm_eval_shaped_samples():
    samples = []
    for doc, (text, strict, flex) in enumerate([("so #### 4", "4", "4"), ("", "[invalid]", "[invalid]"),
                                                ("x y z w " * 10, "[invalid]", "[invalid]")]):
        for name, pred in (("strict-match", strict), ("flexible-extract", flex)):
            samples.append({"doc_id": doc, "target": "#### 4", "resps": [[text]], "filtered_resps": [pred],
                            "filter": name, "metrics": ["exact_match"], "exact_match": float(pred == "4")})
    rows = generation_rows(samples)
    c = collapse_summary(rows)
    assert c["exact_match_strict"] == pytest.approx(1 / 3) and c["strict_flexible_gap"] == 0
    assert c["empty"] == pytest.approx(1 / 3) and c["no_number"] == pytest.approx(2 / 3)
    assert rows[2]["rep_ngram_rate"] > 0.8


def test_collapse_gate_fails_looping_generations_and_passes_steady_ones():
    from pipelines.signoff.collapse_gates import collapse_gates
    from pipelines.signoff.evidence import SchemeEvidence
    from pipelines.signoff.gates import merge_gates

    def ev(name, text, number):
        rows = [{"doc_id": i, "acc": 0, "generation": text, "rep_ngram_rate": rep_ngram_rate(text),
                 "empty": int(not text), "truncated": 0, "no_number": int(not number)} for i in range(30)]
        return SchemeEvidence(scheme=name, task_samples={"gsm8k": rows})

    gates = merge_gates({"collapse_max_increase": 0.1, "n_resamples": 300}, None)
    base = ev("baseline", "Natalia sold 48 clips, then 24 more. #### 72", True)
    looping = ev("w4a4", "and then and then " * 12, False)
    steady = ev("int8", "Natalia sold 48 clips and 24 more. #### 72", True)
    bad = {g.gate: g.verdict for g in collapse_gates(base, looping, gates)}
    good = {g.gate: g.verdict for g in collapse_gates(base, steady, gates)}
    assert bad["collapse_max_increase[gsm8k.rep_ngram_rate]"] == "FAIL"
    assert bad["collapse_max_increase[gsm8k.no_number]"] == "FAIL"
    assert set(good.values()) == {"PASS"}
