"""llama.cpp GGUF schemes: one shared F16 GGUF per model, then ``llama-quantize`` to a type.

The ``gguf`` quantizer writes the type its params name (F16 copies the shared file); the
``gguf-imatrix`` quantizer first computes an importance matrix with ``llama-imatrix`` on the
same calibration windows the other calibrating schemes get (decoded to text, since the tool
reads text), then quantizes with it. The checkpoint is ``model.gguf``; evaluation and the
benchmark run it through llama.cpp (``engine = "llama.cpp"``), never through transformers.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Literal

from pipelines.compute import thread_count
from pipelines.errors import UnsupportedHere
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest

GGUF_FILE = "model.gguf"
# Nominal bits of each type's quantized tensors (llama.cpp reports the real bits per weight,
# which mixes in the tensors a type keeps wider).
TYPE_BITS = {"F16": 16, "Q8_0": 8, "Q6_K": 6, "Q5_K_M": 5, "Q4_K_M": 4, "IQ4_XS": 4}
_QUANT_SIZE = re.compile(r"quant size\s*=\s*([\d.]+)\s*MiB(?:\s*\(([\d.]+)\s*BPW\))?")
_MODEL_SIZE = re.compile(r"model size\s*=\s*([\d.]+)\s*MiB(?:\s*\(([\d.]+)\s*BPW\))?")


class GGUFParams(Params):
    type: Literal["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS"]


def gguf_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / GGUF_FILE


class GGUFQuantizer(Quantizer):
    key = "gguf"
    engine = "llama.cpp"
    # The engine; its version is the llama-cpp-python release whose sdist it is built from,
    # and the llama.cpp commit (library_version below).
    library = "llama.cpp"
    format = "gguf"
    ParamsModel = GGUFParams
    # The transformers reload-and-compare path does not apply: the quantizer scores each
    # tensor itself, dequantized with the gguf package, against the shared F16 GGUF.
    measures_layer_errors = False
    install_hint = "make setup (builds llama.cpp and installs llama-cpp-python against it)"

    def weight_bits(self, params: GGUFParams) -> int | None:
        return TYPE_BITS[params.type]

    def engine_version(self) -> str:
        """What of the engine can change the results: the llama.cpp build (version and flags)."""
        from pipelines.llamacpp.tools import build_dir_name

        return build_dir_name()

    def library_version(self) -> str:
        from pipelines.llamacpp.tools import build_info

        info = build_info()
        return f"{info['version']} (llama.cpp {info['commit']})"

    def check_environment(self, device: str, params: Params) -> None:
        import importlib.util

        from pipelines.llamacpp.tools import tool_path

        if device != "cpu":
            raise UnsupportedHere(f"{self.key}: llama.cpp is built for the CPU only here; the suite's device is {device}")
        for tool in ("llama-quantize", "llama-bench") + (("llama-imatrix",) if self.calibrates else ()):
            tool_path(tool)
        if importlib.util.find_spec("llama_cpp") is None:
            raise UnsupportedHere(f"{self.key}: llama-cpp-python is not installed; {self.install_hint}")

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from pipelines.llamacpp.convert import f16_gguf, link_or_copy, run_tool
        from pipelines.llamacpp.tools import build_info, tool_path
        from pipelines.quantizers.gguf_tensors import tensor_report

        p: GGUFParams = request.params
        threads = thread_count()  # the same count torch gets (pipelines.compute)
        started = time.perf_counter()
        f16 = f16_gguf(request.source, threads)
        convert_s = time.perf_counter() - started
        out = gguf_path(request.out_dir)
        notes, imatrix = [], None
        started = time.perf_counter()
        if p.type == "F16":
            link_or_copy(f16, out)
            log_text = ""
        else:
            argv = [str(tool_path("llama-quantize"))]
            if self.calibrates:
                imatrix = self.importance_matrix(request, f16, threads)
                argv += ["--imatrix", str(imatrix)]
            argv += [str(f16), str(out), p.type, str(threads)]
            log_text = run_tool(argv, f"llama-quantize {p.type}")
        quantize_s = time.perf_counter() - started
        size = _QUANT_SIZE.search(log_text)
        errors, tensors = tensor_report(out, f16)
        n_params = sum(t["n_elements"] for t in tensors)
        bpw = float(size.group(2)) if size and size.group(2) else 8 * out.stat().st_size / n_params
        if self.weight_bits(p) and bpw > self.weight_bits(p) + 0.5:
            notes.append(f"{p.type} averages {bpw:.2f} bits per weight: tensors whose rows are not a "
                         "multiple of the type's block (256 for k-quants) fall back to wider types")
        info = build_info()
        engine = {
            "engine": "llama.cpp", "llama_cpp_commit": info["commit"], "llama_cpp_python": info["version"],
            "build": info["flags"], "type": p.type, "bits_per_weight": round(bpw, 3),
            "bpw_source": "llama-quantize" if size and size.group(2) else "file bytes / parameters",
            "gguf_bytes": out.stat().st_size, "n_parameters": n_params, "threads": threads,
            "f16_gguf": str(f16), "convert_s": round(convert_s, 3), "quantize_s": round(quantize_s, 3),
            "imatrix": str(imatrix) if imatrix else None, "tensors": tensors,
        }
        return QuantizeOutcome(backend="llama.cpp", format="gguf", notes=notes, engine_info=engine,
                               layer_errors=errors)

    def importance_matrix(self, request: QuantizeRequest, f16: Path, threads: int) -> Path:
        raise NotImplementedError  # only the imatrix quantizer calibrates


class GGUFImatrixQuantizer(GGUFQuantizer):
    """GGUF with an importance matrix from ``llama-imatrix`` on the calibration windows."""

    key = "gguf-imatrix"
    calibrates: ClassVar[bool] = True

    def importance_matrix(self, request: QuantizeRequest, f16: Path, threads: int) -> Path:
        """Compute (or reuse: keyed by the F16 file and the calibration windows) the imatrix."""
        from pipelines.llamacpp.convert import run_tool
        from pipelines.llamacpp.tools import tool_path
        from pipelines.quantizers.loading import load_tokenizer

        calib = request.calibration
        key = hashlib.sha256(f"{f16}|{calib.to_dict()['token_ids_sha256']}".encode()).hexdigest()[:16]
        target = f16.parent / f"imatrix-{key}.gguf"
        if target.is_file():
            return target
        tokenizer = load_tokenizer(request.source, request.revision, trust_remote_code=request.trust_remote_code)
        # llama-imatrix reads text and cuts it into windows of -c tokens: one decoded window each.
        text = "\n\n".join(tokenizer.decode(w, skip_special_tokens=True) for w in calib.windows)
        with tempfile.TemporaryDirectory() as tmp:
            text_file = Path(tmp) / "calibration.txt"
            text_file.write_text(text, encoding="utf-8")
            staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            argv = [str(tool_path("llama-imatrix")), "-m", str(f16), "-f", str(text_file), "-o", str(staging),
                    "-c", str(calib.seq_len), "--chunks", str(len(calib.windows)), "-t", str(threads), "--no-ppl"]
            try:
                log_text = run_tool(argv, "llama-imatrix")
                os.replace(staging, target)
            finally:
                staging.unlink(missing_ok=True)
        target.with_suffix(".log").write_text(log_text)
        return target
