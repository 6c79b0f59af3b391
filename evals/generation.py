"""Generative tasks (GSM8K): per-example rows with both answer extractions, and collapse detectors.

A quantized model can keep its log-likelihood scores and still produce repetitive or empty
text. On each generation qeval records:

* ``rep_ngram_rate``: share of repeated word 4-grams, 1 - distinct/total (0 for text shorter
  than one 4-gram); looping text approaches 1;
* ``empty``: nothing but whitespace was generated;
* ``truncated``: generation stopped at ``max_gen_toks`` without a stop sequence (its token
  count reached the limit);
* ``no_number``: the flexible extraction found no number at all (lm-eval's ``[invalid]``);
* per task, the strict-versus-flexible gap: flexible accuracy minus strict accuracy (a model
  that stops writing "#### <answer>" keeps its flexible score and loses its strict one).

A row's ``acc`` is the strict-match exact match (lm-eval's headline filter for gsm8k), so the
accuracy gates and the flips treat a generative task like any other.
"""

from __future__ import annotations

from typing import Any

INVALID = "[invalid]"  # lm-eval's regex filter output when nothing matched
STRICT, FLEXIBLE = "strict-match", "flexible-extract"
NGRAM = 4


def rep_ngram_rate(text: str, n: int = NGRAM) -> float:
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def _first(value: Any) -> Any:
    while isinstance(value, list) and value:
        value = value[0]
    return value


def generation_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per document from lm-eval's samples (one sample per document and filter)."""
    by_doc: dict[int, dict[str, Any]] = {}
    for s in samples:
        doc = int(s["doc_id"])
        row = by_doc.setdefault(doc, {"doc_id": doc, "target": s.get("target"), "filters": {}})
        resps = s.get("resps") or []
        generations = [str(_first(r)) for r in resps]
        row["generation"] = generations[0] if generations else ""
        if len(generations) > 1:
            row["generations"] = generations
        name = s.get("filter", "none")
        row["filters"][name] = {"prediction": _first(s.get("filtered_resps")),
                                **{m: s[m] for m in s.get("metrics", []) if m in s}}
    rows = []
    for doc in sorted(by_doc):
        row = by_doc[doc]
        filters = row["filters"]
        strict = filters.get(STRICT) or next(iter(filters.values()), {})
        flexible = filters.get(FLEXIBLE) or strict
        row["exact_match_strict"] = float(strict.get("exact_match", 0.0))
        row["exact_match_flexible"] = float(flexible.get("exact_match", 0.0))
        row["acc"] = int(row["exact_match_strict"])
        text = row["generation"]
        row["rep_ngram_rate"] = rep_ngram_rate(text)
        row["empty"] = int(not text.strip())
        row["no_number"] = int(flexible.get("prediction") in (None, INVALID, ""))
        rows.append(row)
    return rows


def annotate_truncation(rows: list[dict[str, Any]], tokenizer: Any, max_gen_toks: int | None) -> None:
    """Mark rows whose generation used the whole token budget (no stop sequence was reached)."""
    for row in rows:
        n = len(tokenizer(row.get("generation", ""), add_special_tokens=False).input_ids)
        row["n_gen_tokens"] = n
        row["truncated"] = int(max_gen_toks is not None and n >= max_gen_toks - 1)


COLLAPSE_FIELDS = ("rep_ngram_rate", "empty", "truncated", "no_number")


def collapse_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per-task means of the detectors, the two accuracies and their gap."""
    if not rows:
        return {}
    n = len(rows)
    out = {f: sum(float(r.get(f, 0)) for r in rows) / n for f in COLLAPSE_FIELDS}
    out["exact_match_strict"] = sum(r["exact_match_strict"] for r in rows) / n
    out["exact_match_flexible"] = sum(r["exact_match_flexible"] for r in rows) / n
    out["strict_flexible_gap"] = out["exact_match_flexible"] - out["exact_match_strict"]
    out["mean_gen_tokens"] = sum(r.get("n_gen_tokens", 0) for r in rows) / n
    out["n"] = n
    return out


def decoding(tokenizer: Any, generation: dict[str, Any] | None) -> dict[str, Any]:
    """simple_evaluate's arguments for the generative tasks, from the suite's tasks.generation."""
    g = dict(generation or {})
    chat = g.get("chat_template", "auto")
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat == "auto" else bool(chat)
    gen_kwargs: dict[str, Any] = {}
    if g.get("max_gen_toks"):
        gen_kwargs["max_gen_toks"] = int(g["max_gen_toks"])
    if int(g.get("repeats") or 1) > 1:
        gen_kwargs.update(do_sample=True, temperature=float(g.get("temperature", 0.7)))
    return {"apply_chat_template": use_chat, "fewshot_as_multiturn": use_chat, "gen_kwargs": gen_kwargs or None}


def is_generative(task: Any) -> bool:
    try:
        return task.get_config("output_type") == "generate_until"
    except AttributeError:  # a group
        return False


def recorded_settings(task: Any, args: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The decoding settings that ran, for tasks.json (from the task object after lm-eval applied them)."""
    kwargs = dict(task.get_config("generation_kwargs") or {})
    return {"generation_kwargs": {k: v for k, v in kwargs.items() if k != "until"}, "until": kwargs.get("until"),
            "num_fewshot": task.get_config("num_fewshot"), "repeats": repeats,
            "greedy": not kwargs.get("do_sample", False), "chat_template": args["apply_chat_template"],
            "fewshot_as_multiturn": args["fewshot_as_multiturn"]}
