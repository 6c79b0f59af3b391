"""Shared fixtures: a tiny Llama and a tokenizer trained in the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()


def pytest_configure(config):
    # Tests read the real evaluation data beside the checkout, never the Hub.
    if "QEVAL_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        os.environ["QEVAL_DATA_DIR"] = str(SHARED_DATA)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # gptqmodel asks for 2 CPU workers; on a 2-core machine it must be told.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["QEVAL_DATA_DIR"])
    assert path.is_dir(), f"QEVAL_DATA_DIR={path} does not exist"
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, data_dir) -> Path:
    """A byte-level BPE tokenizer with a 1,024 vocabulary, trained on WikiText-2 in about a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    lines = text.replace("\r\n", "\n").split("\n")[:3000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A randomly initialised Llama (hidden 128, 2 layers) saved with its tokenizer.

    Widths are multiples of 64 so every 4-bit backend (group size 32/64) accepts them.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def recipes(tmp_path, monkeypatch) -> Path:
    """An editable copy of the recipes, used by the pipeline for this test."""
    import shutil

    from pipelines.recipes import resolve as config

    copy = tmp_path / "recipes"
    shutil.copytree(config.RECIPES_DIR, copy)
    monkeypatch.setattr(config, "RECIPES_DIR", copy)
    return copy


@pytest.fixture(autouse=True)
def _forget_user_recipe_files():
    """A user's recipe file registered by one in-process CLI call must not shadow another test's recipes."""
    yield
    from pipelines.recipes import user_files

    user_files.forget()


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty runs root and a local MLflow store for this test."""
    root = tmp_path / "runs"
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return root
