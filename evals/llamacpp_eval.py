"""Perplexity and task accuracy on llama.cpp's logits, with qeval's token ids and protocols.

:class:`LlamaCppScorer` is a scorer for :func:`evals.perplexity.compute_perplexity`: it feeds
the HF tokenizer's ids to llama.cpp (through llama-cpp-python, loading the libllama that
``make setup`` built) and returns logits for every position, so the protocol, the windows and
the scored tokens are those of every other scheme; only the engine differs.

:func:`lm_eval_model` wraps the scorer for lm-eval: a subclass of lm-eval's HFLM whose only
change is where the logits (and generated tokens) come from, so requests are tokenized, truncated, batched and
scored exactly as for the transformers schemes (and the paired sign-off compares like with like).
"""

from __future__ import annotations

import atexit
import os
import types
from pathlib import Path
from typing import Any

from pipelines.compute import thread_count


def _import_binding():
    """llama_cpp, loading the shared library of qeval's llama.cpp build (not a copy of its own)."""
    from pipelines.llamacpp.tools import lib_dir

    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib_dir())
    import llama_cpp

    return llama_cpp


class LlamaCppScorer:
    """Logits of a GGUF through llama.cpp: ``logits(inputs[batch, seq]) -> [batch, seq, vocab]``."""

    def __init__(self, gguf: Path, *, n_ctx: int, threads: int | None = None, label: str = "gguf"):
        import torch

        llama_cpp = _import_binding()
        threads = threads or thread_count()  # the same count torch gets (pipelines.compute)
        self.llm = llama_cpp.Llama(
            model_path=str(gguf), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
            logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False,
        )
        self.gguf = Path(gguf)
        self.threads = threads
        self.device = torch.device("cpu")
        self.dtype = label  # the GGUF type, e.g. "gguf:Q4_K_M" (weights; llama.cpp computes in fp32)
        self.n_ctx = n_ctx
        # Freed before interpreter shutdown: llama-cpp-python's __del__ fails once ctypes is torn down.
        atexit.register(self.close)
        self.n_vocab = self.llm.n_vocab()
        # What qeval reads from a model's config (the context length); n_ctx_train is the GGUF's.
        self.config = types.SimpleNamespace(max_position_embeddings=self.llm._model.n_ctx_train(),
                                            vocab_size=self.n_vocab)

    def logits(self, inputs):
        import numpy as np
        import torch

        rows = []
        for ids in inputs.tolist():
            if len(ids) > self.n_ctx:
                raise ValueError(f"a window of {len(ids)} tokens exceeds llama.cpp's context {self.n_ctx}")
            self.llm.reset()  # the next eval drops the KV cache from position 0: windows are independent
            self.llm.eval(ids)
            rows.append(torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32, copy=True)))
        return torch.stack(rows)

    def generate(self, context, attention_mask, *, max_new_tokens: int, stop: list[str], eos_token_id: int | None,
                 pad_token_id: int, decode, temperature: float = 0.0, seed: int = 1234):
        """Decode each row of ``context`` (left-padded ids) on llama.cpp: greedy, or sampled at a temperature.

        Stops at EOS, at ``max_new_tokens``, or once the decoded continuation contains a stop
        string (as transformers' stop criteria do). Returns ``[batch, len(context) + generated]``
        ids, the continuations right-padded with ``pad_token_id``, the shape HFLM expects.
        """
        import numpy as np
        import torch

        rng = np.random.default_rng(seed)
        rows = []
        for i, ids in enumerate(context.tolist()):
            keep = attention_mask[i].tolist() if attention_mask is not None else [1] * len(ids)
            prompt = [t for t, m in zip(ids, keep, strict=True) if m]
            if len(prompt) + max_new_tokens > self.n_ctx:
                raise ValueError(f"{len(prompt)} prompt + {max_new_tokens} new tokens exceed llama.cpp's "
                                 f"context {self.n_ctx}")
            self.llm.reset()
            self.llm.eval(prompt)
            new: list[int] = []
            while len(new) < max_new_tokens:
                logits = np.asarray(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)
                if temperature > 0:
                    p = np.exp((logits - logits.max()) / temperature)
                    token = int(rng.choice(p.size, p=p / p.sum()))
                else:
                    token = int(logits.argmax())
                new.append(token)
                if token == eos_token_id or any(s in decode(new) for s in stop or ()):
                    break
                self.llm.eval([token])
            rows.append(ids + new)
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)

    def lm_eval_model(self, tokenizer, *, batch_size: int, max_length: int | None):
        return lm_eval_model(self, tokenizer, batch_size=batch_size, max_length=max_length)

    def close(self) -> None:
        self.llm.close()


def lm_eval_model(scorer: LlamaCppScorer, tokenizer, *, batch_size: int, max_length: int | None) -> Any:
    """An lm-eval model that is HFLM in all but the forward pass, which llama.cpp runs."""
    import torch
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.huggingface import HFLM

    class LlamaCppLM(HFLM):
        def __init__(self):
            TemplateLM.__init__(self)  # HFLM's __init__ would load a transformers model
            self.backend = "causal"
            self.tokenizer = tokenizer
            self.vocab_size = tokenizer.vocab_size
            self._max_length = max_length or scorer.n_ctx
            self.batch_size_per_gpu = batch_size
            self.batch_schedule = 1
            self.batch_sizes = {}
            self.max_batch_size = batch_size
            self._device = scorer.device
            self.logits_cache = True
            self.softmax_dtype = None
            self.truncation = False
            self.add_bos_token = None
            self.custom_prefix_token_id = None
            self.revision = None
            self.pretrained = str(scorer.gguf)
            self.peft = self.delta = None
            # HFLM's other settings, at their defaults (no thinking, no chat template, no autocast).
            self.enable_thinking = False
            self.think_end_token = None
            self.chat_template_args = {}
            self.mixed_precision_dtype = None
            self._model = types.SimpleNamespace(config=scorer.config, dtype=scorer.dtype)

        @property
        def model(self):
            return self._model

        def _model_call(self, inps, attn_mask=None, labels=None):
            # Right padding (HFLM pads causal batches on the right) cannot change earlier logits.
            return scorer.logits(inps)

        def get_model_info(self) -> dict:
            return {"model_engine": "llama.cpp", "model_gguf": str(scorer.gguf), "model_dtype": scorer.dtype,
                    "model_threads": scorer.threads}

        def _model_generate(self, context, max_length, stop, attention_mask=None, **kwargs):
            # HFLM's generate_until (its batching, chat template, stop handling and
            # post-processing) stays; only the decoding loop runs on llama.cpp.
            return scorer.generate(context, attention_mask, max_new_tokens=max_length - context.shape[1],
                                   stop=stop, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id or 0, decode=tokenizer.decode,
                                   temperature=float(kwargs.get("temperature") or 0.0)
                                   if kwargs.get("do_sample") else 0.0)

    with torch.inference_mode():
        return LlamaCppLM()


def open_gguf(gguf: Path, *, n_ctx: int, label: str) -> LlamaCppScorer:
    return LlamaCppScorer(gguf, n_ctx=n_ctx, label=label)
