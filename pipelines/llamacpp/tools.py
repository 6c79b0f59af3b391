"""Where the llama.cpp build lives, and the paths of its tools (or why they are missing).

The build cache is keyed by the pinned llama-cpp-python version and a digest of the build
flags and of the CPU extensions it was compiled for, so a new pin, a changed flag or another
CPU builds beside the old one instead of reusing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from pipelines.errors import UnsupportedHere
from pipelines.recipes.embedded import cache_dir

# The llama-cpp-python release whose sdist vendors llama.cpp (tools, converter, gguf-py).
VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TARGETS = ("llama", "llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench", "llama-server")
CMAKE_FLAGS = (
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
    # Shared libllama so that llama-cpp-python loads this build instead of compiling its own.
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=ON",  # the cache lives on the machine that built it
    # No network: no curl/https model download, no prebuilt web UI, no FetchContent.
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF", "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
)
BUILD_INFO = "build.json"  # written last, by a build that succeeded
FAILED_INFO = "failed.json"  # the reason a build did not happen
SETUP_HINT = "run `make setup` (or `python -m pipelines.llamacpp.build`)"


def cache_root() -> Path:
    return cache_dir() / "llama.cpp"


# The x86 extensions ggml's native build compiles for (GGML_NATIVE=ON: -march=native).
_GGML_X86_FLAGS = ("pni", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni",
                   "avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16",
                   "amx_tile", "amx_int8", "amx_bf16")


def cpu_build_features() -> list[str]:
    """The CPU extensions a native build depends on: on x86 those ggml compiles for, elsewhere
    every feature the kernel lists. A build cache copied to a CPU without them would die of SIGILL,
    so they are part of the build's name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    break
            else:
                return []
    except OSError:
        return []
    if platform.machine() in ("x86_64", "AMD64", "i686"):
        return [flag for flag in _GGML_X86_FLAGS if flag in present]
    return sorted(present)


def build_dir_name() -> str:
    key = json.dumps([CMAKE_FLAGS, TARGETS, platform.machine(), cpu_build_features()]).encode()
    return f"{VERSION}-{hashlib.sha256(key).hexdigest()[:12]}"


def build_dir() -> Path:
    """The finished build, or UnsupportedHere naming why there is none."""
    out = Path(os.environ["QEVAL_LLAMACPP_DIR"]) if os.environ.get("QEVAL_LLAMACPP_DIR") else (
        cache_root() / build_dir_name())
    if (out / BUILD_INFO).is_file():
        return out
    failed = out / FAILED_INFO
    if failed.is_file():
        reason = json.loads(failed.read_text()).get("reason", "unknown reason")
        raise UnsupportedHere(f"llama.cpp {VERSION} could not be built: {reason}")
    raise UnsupportedHere(f"llama.cpp {VERSION} is not built in {out}; {SETUP_HINT}")


def build_info() -> dict:
    return json.loads((build_dir() / BUILD_INFO).read_text())


def source_tree() -> Path:
    """The vendored llama.cpp tree (convert_hf_to_gguf.py, gguf-py)."""
    return Path(build_info()["source"]) / "vendor" / "llama.cpp"


def lib_dir() -> Path:
    """The directory holding libllama and libggml*, for LLAMA_CPP_LIB_PATH."""
    return build_dir() / "build" / "bin"


def tool_path(name: str) -> Path:
    """The path of a built llama.cpp tool (e.g. ``llama-server``), or UnsupportedHere with why not."""
    if name not in TARGETS[1:]:
        raise UnsupportedHere(f"{name!r} is not one of the llama.cpp tools qeval builds: {', '.join(TARGETS[1:])}")
    path = lib_dir() / name
    if not os.access(path, os.X_OK):
        raise UnsupportedHere(f"llama.cpp build in {build_dir()} has no executable {name}; "
                              f"rebuild with `python -m pipelines.llamacpp.build --force`")
    return path
