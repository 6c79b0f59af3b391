"""`qeval env`: what this machine is, and what qeval will do on it.

The CPU and its ISA, torch's kernels and native 16-bit support, the probe's GFLOP/s per
dtype on a model's shapes, a measured memory bandwidth, the compute dtype and threads the
sweep would choose, CUDA devices, the llama.cpp build and its CPU features, and the optional
serving engines. ``--json`` prints the same as one JSON object for scripts.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from typing import Any

from pipelines import compute


def memory_bandwidth_gbs(mib: int = 256, repeats: int = 3) -> float:
    """Best of ``repeats`` copies of a ``mib`` MiB tensor: read + write bytes per second (GB/s)."""
    import torch

    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def llamacpp_info() -> dict[str, Any]:
    """The llama.cpp build qeval uses (commit, flags) and the CPU features ggml was compiled for."""
    from pipelines.errors import UnsupportedHere
    from pipelines.llamacpp import tools

    try:
        info = dict(tools.build_info())
    except UnsupportedHere as exc:
        return {"present": False, "reason": str(exc)}
    out = {"present": True, "version": tools.VERSION, "commit": info.get("commit"),
           "native": "-DGGML_NATIVE=ON" in tools.CMAKE_FLAGS}
    try:
        from evals.llamacpp_eval import _import_binding

        out["system_info"] = _import_binding().llama_print_system_info().decode().strip()
    except Exception as exc:  # the binding is optional: the tools still run without it
        out["system_info"] = f"unavailable ({type(exc).__name__}: {exc})"
    return out


def engines() -> dict[str, str]:
    """Each optional engine: present (with where) or why not."""
    import os
    import sys
    from pathlib import Path

    out = {}
    transformers_cli = Path(sys.executable).parent / "transformers"
    serving = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "openai"))
    out["transformers serve"] = "present" if transformers_cli.is_file() and serving else "absent (pip install 'transformers[serving]')"
    try:
        from pipelines.llamacpp.tools import tool_path

        out["llama-server"] = f"present ({tool_path('llama-server')})"
    except Exception as exc:
        out["llama-server"] = f"absent ({exc})"
    vllm = os.environ.get("QEVAL_VLLM_COMMAND") or shutil.which("vllm")
    out["vllm"] = f"present ({vllm})" if vllm else "absent (set QEVAL_VLLM_COMMAND; CUDA only)"
    trtllm = shutil.which("trtllm-serve")
    out["trtllm-serve"] = f"present ({trtllm})" if trtllm else "absent (CUDA only)"
    out["guidellm"] = "present" if importlib.util.find_spec("guidellm") else "absent (pip install -e .)"
    return out


def report(model_name: str = "smollm2-135m") -> dict[str, Any]:
    import torch

    from pipelines.quantizers.loading import resolve_device
    from pipelines.recipes.models import resolve_compute, resolve_model

    threads = compute.thread_count()
    torch.set_num_threads(threads)
    features = compute.cpu_features()
    model = resolve_model(model_name)
    device = resolve_device("auto")
    choice = resolve_compute(model, device)
    gflops = choice.probe_gflops
    if gflops is None:  # the choice did not need the probe (not native, or CUDA): show it anyway
        from pipelines.recipes.models import source_path

        try:
            from transformers import AutoConfig

            shapes = compute.shapes_of_config(AutoConfig.from_pretrained(source_path(model)))
        except Exception:
            shapes = compute.model_shapes(1024, 4096, 32000)
        gflops = compute.probe(shapes, threads)["gflops"]
    cuda = [{"index": i, "name": torch.cuda.get_device_name(i),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
             "bf16": torch.cuda.is_bf16_supported()} for i in range(torch.cuda.device_count())]
    return {
        "cpu": {"model": features.model, "flags": features.flags, "torch_capability": features.capability,
                "native_bf16": features.native_bf16, "native_fp16": features.native_fp16,
                "physical_cores": compute.physical_cores()},
        "torch": torch.__version__,
        "threads": threads,
        "probe_gflops": gflops,
        "memory_bandwidth_gbs": round(memory_bandwidth_gbs(), 1),
        "model": model.name,
        "compute": choice.model_dump(exclude={"probe_gflops"}),
        "cuda": cuda,
        "llama_cpp": llamacpp_info(),
        "engines": engines(),
    }


def render(info: dict[str, Any]) -> str:
    cpu = info["cpu"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    lines = [
        f"CPU            {cpu['model']} ({cpu['physical_cores']} physical cores)",
        f"ISA            {flags}",
        f"torch          {info['torch']}: kernels {cpu['torch_capability']}, native bf16 "
        f"{'yes' if cpu['native_bf16'] else 'no'}, native fp16 {'yes' if cpu['native_fp16'] else 'no'}",
        f"memory         {info['memory_bandwidth_gbs']} GB/s (copy, read + write)",
        f"probe GFLOP/s  {info['threads']} threads, {info['model']}'s shapes:",
    ]
    for shape, row in info["probe_gflops"].items():
        lines.append(f"  {shape:<12} " + "  ".join(f"{d} {v:8.2f}" for d, v in row.items()))
    c = info["compute"]
    lines += [
        f"compute dtype  {c['dtype']} on {c['device']} with {c['threads']} threads (storage {c['storage_dtype']},"
        f" requested {c['requested']})",
        f"  why          {c['reason']}",
        *(f"  warning      {w}" for w in c.get("warnings") or []),
        "CUDA           " + (", ".join(f"{d['index']}: {d['name']} (sm {d['capability']}, bf16 "
                                       f"{'yes' if d['bf16'] else 'no'})" for d in info["cuda"]) or "none"),
    ]
    lc = info["llama_cpp"]
    if lc.get("present"):
        lines.append(f"llama.cpp      {lc['version']} commit {lc.get('commit')}, "
                     f"{'built for this CPU (GGML_NATIVE)' if lc.get('native') else 'portable build'}")
        lines.append(f"  features     {lc.get('system_info')}")
    else:
        lines.append(f"llama.cpp      absent: {lc.get('reason')}")
    lines.append("engines")
    lines += [f"  {name:<18} {state}" for name, state in info["engines"].items()]
    return "\n".join(lines)


def main(model_name: str, as_json: bool) -> str:
    info = report(model_name)
    return json.dumps(info, indent=2) if as_json else render(info)
