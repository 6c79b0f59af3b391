"""Logging for people: qeval at INFO, libraries at WARNING, progress bars off with --quiet.

A library warning repeated on every call (bitsandbytes' "MatMul8bitLt: inputs will be
cast ..." once per forward pass) is shown once; the repeats are counted and a one-line
summary is printed when the process exits. Python's own once-per-location rule does not
hold here: every ``warnings.catch_warnings()`` in a library resets it.

``quiet`` leaves only errors (and what the CLI prints: the stage table and the verdicts).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import warnings
from collections import Counter

# Longest message text shown in the end-of-process summary of suppressed repeats.
SUMMARY_TEXT_CHARS = 90


class RepeatCounter:
    """Counts messages by identity; the first of each passes, the rest are counted."""

    def __init__(self) -> None:
        self.seen: Counter[tuple] = Counter()
        self.text: dict[tuple, str] = {}

    def first(self, key: tuple, text: str) -> bool:
        self.seen[key] += 1
        self.text.setdefault(key, text)
        return self.seen[key] == 1

    def suppressed(self) -> list[tuple[str, int]]:
        """(message, times suppressed) of every message seen more than once, most repeated first."""
        return [(self.text[k], n - 1) for k, n in self.seen.most_common() if n > 1]

    def summary(self) -> str | None:
        rows = self.suppressed()
        if not rows:
            return None
        parts = []
        for text, n in rows[:5]:
            line = " ".join(text.split())
            short = line if len(line) <= SUMMARY_TEXT_CHARS else line[: SUMMARY_TEXT_CHARS - 3] + "..."
            parts.append(f"{short!r} x{n}")
        more = f" (+{len(rows) - 5} more)" if len(rows) > 5 else ""
        return f"qeval: suppressed repeats of {len(rows)} warning(s): " + "; ".join(parts) + more


REPEATS = RepeatCounter()


# qeval's own loggers: their messages name a scheme and a stage, so a repeat is news.
OWN_LOGGERS = ("pipelines", "evals")


class OnceFilter(logging.Filter):
    """Pass the first of each library warning (logger, message); count the repeats.

    Only library records at WARNING are deduplicated: errors may each be about a
    different scheme or stage, and qeval's own messages always pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.name.split(".")[0] in OWN_LOGGERS:
            return True
        return REPEATS.first(("log", record.name, record.getMessage()), record.getMessage())


_original_showwarning = warnings.showwarning


def _showwarning_once(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    if REPEATS.first(("warning", category.__name__, text), f"{category.__name__}: {text}"):
        _original_showwarning(message, category, filename, lineno, file, line)


def _print_summary() -> None:
    summary = REPEATS.summary()
    if summary:
        print(summary, file=sys.stderr)


_installed = False


def configure_logging(quiet: bool) -> None:
    global _installed
    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.ERROR if quiet else logging.INFO)
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
        # Python warnings are for people reading the log; quiet has none.
        warnings.simplefilter("ignore")
    if _installed:
        return
    _installed = True
    # On the handlers, so that records of every logger (libraries' too) are deduplicated.
    for handler in logging.getLogger().handlers:
        handler.addFilter(OnceFilter())
    warnings.showwarning = _showwarning_once
    atexit.register(_print_summary)
