"""Named evaluation and calibration datasets: a local data directory first, else the Hub.

The local layout is the one of the project's shared data folder (see its
SOURCES.md). A data directory is given by ``QEVAL_DATA_DIR`` or a recipe field;
without one, datasets are read from the Hugging Face Hub through ``datasets``.
Every loader returns the records together with a provenance dict (local file
and its sha256, or Hub id, config, split and revision) so that each number
can name its source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset could not be found or read; the message names the fix."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where one named dataset lives, locally and on the Hub."""

    local_file: str
    hub_path: str
    hub_name: str | None
    hub_split: str
    labels_file: str | None = None  # piqa and winogrande keep labels beside the items
    hub_data_files: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    "wikitext2": DatasetSpec("wikitext-2-raw/wiki.test.raw", "Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
    "c4": DatasetSpec(
        "c4/c4_validation_2k.jsonl", "allenai/c4", None, "validation",
        hub_data_files="en/c4-validation.00000-of-00008.json.gz",
    ),
    "lambada": DatasetSpec("lambada_openai/lambada_test.jsonl", "EleutherAI/lambada_openai", "default", "test"),
    "hellaswag": DatasetSpec("hellaswag/hellaswag_val.preprocessed.jsonl", "Rowan/hellaswag", None, "validation"),
    "arc_easy": DatasetSpec("arc_easy/ARC-Easy-Test.hf.jsonl", "allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": DatasetSpec("arc_challenge/ARC-Challenge-Test.hf.jsonl", "allenai/ai2_arc", "ARC-Challenge", "test"),
    "piqa": DatasetSpec("piqa/valid.jsonl", "ybisk/piqa", None, "validation", labels_file="piqa/valid-labels.lst"),
    "winogrande": DatasetSpec("winogrande/dev.jsonl", "allenai/winogrande", "winogrande_xl", "validation", labels_file="winogrande/dev-labels.lst"),
    # GSM8K: test rows are scored, train rows are the few-shot examples (as lm-eval's gsm8k)
    "gsm8k": DatasetSpec("gsm8k/test.jsonl", "openai/gsm8k", "main", "test"),
    "gsm8k_train": DatasetSpec("gsm8k/train.jsonl", "openai/gsm8k", "main", "train"),
}

# C4 has no local train split: the local validation documents are split in two
# disjoint halves so calibration never sees a document that perplexity scores.
C4_EVAL_DOCS = 1000


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def resolve_data_dir(configured: str | os.PathLike | None = None) -> Path | None:
    """Return the data directory: the recipe's field, else ``QEVAL_DATA_DIR``, else None (Hub)."""
    value = configured or os.environ.get("QEVAL_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise DataError(
            f"data directory {path} does not exist. Set QEVAL_DATA_DIR (or the recipe's "
            "data_dir) to a folder laid out like the project's shared data folder, or unset it "
            "to read datasets from the Hugging Face Hub."
        )
    return path


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}. Available: {', '.join(dataset_names())}")
    return DATASETS[name]


def sha256_file(path: Path) -> str:
    """sha256 of a file, computed once per content version (path, size and mtime)."""
    st = Path(path).stat()
    return _sha256_file(str(path), st.st_size, st.st_mtime_ns)


@cache
def _sha256_file(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_fingerprint(name: str, data_dir: Path | None) -> str:
    """What identifies a dataset's content, for cache keys: the sha256 of its local files, or its Hub id.

    Keys use this instead of the data directory's path, so moving the data to
    another folder with the same content reruns nothing, and an edited file
    reruns what read it.
    """
    s = spec(name)
    if data_dir is None:
        return f"hub:{s.hub_path}/{s.hub_name or ''}/{s.hub_split}/{s.hub_data_files or ''}"
    files = [_local_path(name, data_dir, rel) for rel in filter(None, (s.local_file, s.labels_file))]
    return "+".join(sha256_file(p) for p in files)


def _local_path(name: str, data_dir: Path, rel: str) -> Path:
    path = data_dir / rel
    if not path.is_file():
        raise DataError(
            f"dataset {name!r}: missing file {path}. Put the file there (layout of the shared "
            f"data folder: {rel}), point QEVAL_DATA_DIR at a folder that has it, or unset "
            "QEVAL_DATA_DIR to read it from the Hub."
        )
    return path


def _local_provenance(path: Path) -> dict[str, Any]:
    return {"kind": "local", "path": str(path), "sha256": sha256_file(path)}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _hub_records(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import datasets  # heavy; only when the Hub is the source

    s = spec(name)
    kwargs: dict[str, Any] = {"split": s.hub_split}
    if s.hub_data_files:
        kwargs["data_files"] = {s.hub_split: s.hub_data_files}
    try:
        ds = datasets.load_dataset(s.hub_path, s.hub_name, **kwargs)
    except Exception as exc:  # network, auth, offline mode
        raise DataError(
            f"dataset {name!r}: could not load {s.hub_path} from the Hub ({exc}). Without Hub "
            "access, set QEVAL_DATA_DIR to a local data folder."
        ) from exc
    version = getattr(ds.info, "version", None)
    prov = {
        "kind": "hub",
        "path": s.hub_path,
        "name": s.hub_name,
        "split": s.hub_split,
        "revision": hub_commit_sha(ds, s.hub_path),  # the dataset repository's commit
        "version": str(version) if version else None,  # the builder's version string, not a commit
        "fingerprint": getattr(ds, "_fingerprint", None),
    }
    return [dict(r) for r in ds], prov


_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_URL_COMMIT_SHA = re.compile(r"@([0-9a-f]{40})/")


def commit_sha_in(paths: list[str]) -> str | None:
    """Return the 40-hex commit a loaded dataset's files name, or None.

    ``datasets`` caches a Hub dataset under ``<name>/<config>/<version>/<commit sha>/``
    (online and offline alike) and resolves data files as ``hf://datasets/<repo>@<sha>/...``.
    Packaged builders (json, parquet on local files) use a 64-hex config hash there, which
    is not a commit and is not matched.
    """
    for path in paths:
        found = _URL_COMMIT_SHA.search(path)
        if found:
            return found.group(1)
        for part in Path(path).parts:
            if _COMMIT_SHA.match(part):
                return part
    return None


def hub_commit_sha(ds, repo_id: str) -> str | None:
    """Return the commit of a Hub dataset as loaded; online, the Hub's answer where the files do not say."""
    paths = [f.get("filename", "") for f in getattr(ds, "cache_files", None) or []]
    paths += list((getattr(ds.info, "download_checksums", None) or {}).keys())
    sha = commit_sha_in(paths)
    if sha or os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return sha
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id).sha
    except Exception as exc:  # network, auth: provenance without a commit is logged, not fatal
        log.warning("dataset %s: commit sha unknown (%s)", repo_id, exc)
        return None


def load_records(name: str, data_dir: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return the rows of a dataset (Hub schema) and their provenance.

    For the local files the rows are converted to the schema of the Hub
    dataset lm-eval reads (labels merged in for piqa and winogrande), so a
    task definition reads the same fields whatever the source.
    """
    s = spec(name)
    if data_dir is None:
        return _hub_records(name)
    path = _local_path(name, data_dir, s.local_file)
    prov = _local_provenance(path)
    if name == "wikitext2":
        rows = [{"text": line} for line in wikitext_rows(path)]
        return rows, prov
    rows = read_jsonl(path)
    if s.labels_file:
        labels_path = _local_path(name, data_dir, s.labels_file)
        labels = [ln.strip() for ln in labels_path.read_text().splitlines() if ln.strip()]
        if len(labels) != len(rows):
            raise DataError(f"dataset {name!r}: {len(rows)} items but {len(labels)} labels in {labels_path}")
        prov["labels_sha256"] = sha256_file(labels_path)
        for row, label in zip(rows, labels, strict=True):
            row["label" if name == "piqa" else "answer"] = int(label) if name == "piqa" else label
    return rows, prov


def wikitext_rows(path: Path) -> list[str]:
    """Lines of the local raw WikiText-2 test file after CRLF -> LF."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    return text.split("\n")


def perplexity_text(name: str, data_dir: Path | None) -> tuple[str, dict[str, Any]]:
    """Return the text the perplexity protocol tokenizes, and its provenance.

    WikiText-2: ``"\\n\\n".join(rows)`` (the GPTQ/AWQ protocol). C4: the
    evaluation half of the validation documents, joined the same way.
    """
    if name not in ("wikitext2", "c4"):
        raise DataError(f"perplexity supports wikitext2 and c4, not {name!r}")
    rows, prov = load_records(name, data_dir)
    texts = [r["text"] for r in rows]
    if name == "c4":
        texts = texts[:C4_EVAL_DOCS]
        prov = {**prov, "documents": f"[0, {len(texts)})"}
    return "\n\n".join(texts), prov


def calibration_texts(name: str, data_dir: Path | None) -> tuple[list[str], dict[str, Any]]:
    """Return documents to draw calibration samples from, disjoint from perplexity text."""
    if name == "c4":
        if data_dir is None:
            return _c4_train_from_hub()
        rows, prov = load_records("c4", data_dir)
        docs = [r["text"] for r in rows[C4_EVAL_DOCS:]]
        if not docs:
            raise DataError("c4 calibration: the local file has no documents beyond the evaluation half")
        return docs, {**prov, "documents": f"[{C4_EVAL_DOCS}, {C4_EVAL_DOCS + len(docs)})"}
    if name == "wikitext2":
        if data_dir is not None:
            raise DataError(
                "wikitext2 calibration needs the train split, and the local data folder holds only "
                "the test split that perplexity scores. Calibrate on c4 (calibration.dataset: c4), "
                "or unset QEVAL_DATA_DIR to read the train split from the Hub."
            )
        import datasets

        ds = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")
        return [t for t in ds["text"] if t.strip()], {"kind": "hub", "path": "Salesforce/wikitext", "split": "train"}
    raise DataError(f"calibration dataset must be c4 or wikitext2, not {name!r}")


def _c4_train_from_hub() -> tuple[list[str], dict[str, Any]]:
    import datasets

    files = "en/c4-train.00000-of-01024.json.gz"
    ds = datasets.load_dataset("allenai/c4", data_files={"train": files}, split="train")
    return list(ds["text"][:20000]), {"kind": "hub", "path": "allenai/c4", "data_files": files}
