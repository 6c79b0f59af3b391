"""Functions the qeval task YAMLs name with ``!function utils.<name>``.

Copied from lm-eval 0.4.13 (lm_eval/tasks/hellaswag/utils.py and
lm_eval/tasks/winogrande/preprocess_winogrande.py) so the local tasks score
exactly as lm-eval's own do; tests/test_harness.py checks them against lm-eval's.
lm-eval loads this file by path, next to the YAML that names it.
"""

import re


def hellaswag_preprocess(text):
    """Clean one HellaSwag string as lm-eval does (WikiHow bracket artefacts, double spaces)."""
    text = text.strip()
    # Brackets are artifacts of the WikiHow part of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process_docs(dataset):
    """Give every row ``query``, ``choices`` and ``gold``, from Hub rows or preprocessed rows."""
    if "ctx_a" in dataset.column_names:
        return dataset.map(_hellaswag_hub_doc)
    # The shared data folder's rows are already joined into `query`; lm-eval's cleanup still
    # removes the few bracket artefacts left in them (it leaves clean text unchanged).
    return dataset.map(_hellaswag_preprocessed_doc)


def _hellaswag_hub_doc(doc):
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def _hellaswag_preprocessed_doc(doc):
    return {
        "query": hellaswag_preprocess(doc["query"]),
        "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def winogrande_doc_to_text(doc):
    """Index of the correct option: partial scoring makes one context per option."""
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def winogrande_doc_to_target(doc):
    """The sentence after the blank, scored after every context."""
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    """The sentence up to the blank, filled with each option."""
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]
