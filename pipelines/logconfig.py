"""Logging for people: qeval at INFO, libraries at WARNING, progress bars off with --quiet."""

from __future__ import annotations

import logging
import os


def configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Libraries are chatty at INFO; keep their warnings only.
    for noisy in ("httpx", "urllib3", "gptqmodel", "llmcompressor", "transformers", "datasets", "lm_eval",
                  "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # torchao warns at import about CUDA-only kernels it cannot load on a CPU, and
    # torch about deprecated pytree registrations inside torchao: not actionable here.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if quiet:
        # Progress bars of every library (tqdm, the Hub, transformers' loading bars).
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
