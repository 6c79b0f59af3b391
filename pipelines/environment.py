"""Library versions, the qeval git commit and the hardware, for stage keys and provenance."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The checkout (or installed tree) root: pipelines/.. . Defined here, at the lowest rank, so
# every layer can use it; pipelines.rundir re-exports it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Distributions whose versions change results; they are part of every stage key.
TRACKED_DISTRIBUTIONS = (
    "torch",
    "transformers",
    "accelerate",
    "gptqmodel",
    "llmcompressor",
    "compressed-tensors",
    "bitsandbytes",
    "torchao",
    "lm_eval",
    "datasets",
    "mlflow",
    # tokenization, the checkpoint files and the arrays every metric is computed on
    "tokenizers",
    "safetensors",
    "numpy",
)


@functools.cache
def library_versions() -> dict[str, str]:
    """Return the installed version of each tracked distribution ("missing" if absent)."""
    versions = {}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def library_version(dist: str) -> str:
    return library_versions().get(dist) or metadata.version(dist)


@functools.cache
def git_commit() -> str:
    """Return the qeval commit (with "-dirty" when the tree has changes), or "unknown"."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.cache
def hardware() -> dict[str, str | int | None]:
    """Describe the CPU and any CUDA GPUs (name, count, driver, compute capability)."""
    import torch

    info: dict[str, str | int | None] = {
        "cpu_model": cpu_model(),
        "cpu_count": __import__("os").cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu_name": None,
        "gpu_count": 0,
        "gpu_driver": None,
        "gpu_compute_capability": None,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_name"] = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        info["gpu_compute_capability"] = f"{major}.{minor}"
        info["gpu_driver"] = _nvidia_driver()
    return info


@functools.cache
def cpu_model() -> str:
    """Return the CPU model string (/proc/cpuinfo's "model name"), else the platform's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=10,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
