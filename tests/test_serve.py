"""The serve stage's parts: the server process, the engines' choices, SLO/capacity/cost arithmetic,
and (slow) a real `transformers serve` under a short GuideLLM load."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evals.capacity import (
    capacity,
    kv_bytes_per_token,
    kv_headroom,
    level_meets,
    usd_per_million_tokens,
)
from evals.load import is_over_saturated
from pipelines.engines import choose_engine, launch
from pipelines.engines.process import (
    EngineStartError,
    PortTakenError,
    ServerProcess,
    free_port,
    running_server,
)
from pipelines.errors import QevalError, UnsupportedHere
from pipelines.recipes.serving import ServeConfig, SloConfig


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie not yet reaped by its parent counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def _health_server(tmp_path: Path) -> list[str]:
    """A real HTTP server whose /health answers 200 (a file named health in its folder)."""
    (tmp_path / "health").write_text("ok")
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path)]


def test_port_taken_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortTakenError, match=f"port {port} .* already in use"):
            with running_server(_health_server(tmp_path) + [str(port)], port, tmp_path / "log", "/health", 5):
                pass


def test_server_exiting_at_start_reports_its_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('no such model: oops'); sys.exit(3)"]
    with pytest.raises(EngineStartError, match="(?s)exited with code 3.*no such model: oops"):
        with running_server(cmd, free_port(), tmp_path / "log", "/health", 30):
            pass


def test_health_timeout_stops_the_server(tmp_path):
    port = free_port()
    server = ServerProcess(_health_server(tmp_path) + [str(port)], port, tmp_path / "log")
    (tmp_path / "health").unlink(missing_ok=True)
    server.start()
    with pytest.raises(EngineStartError, match="not healthy .* within 2 s"):
        server.wait_healthy("/nothing-here", 2)
    server.stop()
    assert _gone(server.pid)


def test_server_stopped_on_keyboard_interrupt(tmp_path):
    port = free_port()
    pid = None
    with pytest.raises(KeyboardInterrupt):
        with running_server(_health_server(tmp_path) + [str(port)], port, tmp_path / "log", "/health", 30) as srv:
            pid = srv.pid
            raise KeyboardInterrupt
    assert pid and _gone(pid)


def test_server_dies_with_a_killed_parent(tmp_path):
    """SIGKILL of the process running the stage (no finally runs) still takes the server down."""
    port = free_port()
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pipelines.engines.process import running_server
        cmd = {_health_server(tmp_path) + [str(port)]!r}
        with running_server(cmd, {port}, Path({str(tmp_path / 'log')!r}), "/health", 30) as srv:
            print(srv.pid, flush=True)
            time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    server_pid = int(parent.stdout.readline())
    assert not _gone(server_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while not _gone(server_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert _gone(server_pid)


def test_engine_choice_and_unservable_schemes(tmp_path, monkeypatch):
    assert choose_engine("auto", "transformers", "cpu") == "transformers"
    assert choose_engine("auto", "llama.cpp", "cpu") == "llama.cpp"
    assert choose_engine("auto", "transformers", "cuda") == "vllm"
    serve = ServeConfig()
    with pytest.raises(UnsupportedHere, match="cannot serve 'compressed-tensors' checkpoints on CPU"):
        launch("transformers", checkpoint=str(tmp_path), port=1, fmt="compressed-tensors", device="cpu", serve=serve,
               threads=1)
    monkeypatch.setenv("QEVAL_VLLM_COMMAND", str(tmp_path / "no-vllm-here"))
    with pytest.raises(UnsupportedHere, match="vLLM is not installed.*QEVAL_VLLM_COMMAND"):
        launch("vllm", checkpoint=str(tmp_path), port=1, fmt="dense", device="cuda", serve=serve, threads=1)
    with pytest.raises(UnsupportedHere, match="serves on CUDA"):
        launch("vllm", checkpoint=str(tmp_path), port=1, fmt="dense", device="cpu", serve=serve, threads=1)


def test_malformed_slo_and_serve_blocks_are_rejected():
    from pipelines.recipes import validate

    with pytest.raises(QevalError, match="unknown key 'ttft_p99'.*ttft_ms_p99"):
        validate(SloConfig, {"ttft_p99": 100}, "suite quick")
    with pytest.raises(QevalError, match="itl_ms_p99.*greater than 0"):
        validate(SloConfig, {"itl_ms_p99": -5}, "suite quick")
    with pytest.raises(QevalError, match="must rise strictly"):
        validate(ServeConfig, {"levels": [4, 2]}, "suite quick")
    with pytest.raises(QevalError, match="needs serve.endpoint"):
        validate(ServeConfig, {"engine": "endpoint"}, "suite quick")


def _level(c, ttft99, itl99, tps, rps=1.0, errors=0, e2e99=1000.0):
    return {"concurrency": c, "requests_ok": 8, "errors": errors, "requests_per_s": rps, "output_tokens_per_s": tps,
            "ttft_ms": {"p99": ttft99}, "itl_ms": {"p99": itl99}, "e2e_ms": {"p99": e2e99}}


def test_capacity_goodput_and_zero_capacity():
    slo = {"ttft_ms_p99": 500, "itl_ms_p99": 100}
    levels = [_level(1, 100, 50, 40, 1.0), _level(2, 300, 80, 70, 1.8), _level(4, 900, 120, 75, 2.0)]
    cap = capacity(levels, slo)
    assert cap["capacity_concurrency"] == 2 and cap["goodput_rps"] == 1.8
    assert "ttft_ms_p99 900 > 500" in cap["misses"]["4"]
    assert capacity([_level(1, 600, 50, 40)], slo)["capacity_concurrency"] == 0  # a result, not a crash
    assert level_meets(_level(1, 100, 50, 40, errors=1), slo)[1] == ["1 request(s) failed"]
    assert usd_per_million_tokens(0.36, 100.0) == pytest.approx(1.0)
    assert usd_per_million_tokens(0.36, 0.0) is None
    assert is_over_saturated(_level(2, 0, 0, 70, e2e99=1000), _level(4, 0, 0, 71, e2e99=2000), 0.05)
    assert not is_over_saturated(_level(2, 0, 0, 70, e2e99=1000), _level(4, 0, 0, 90, e2e99=2000), 0.05)


def test_kv_headroom_from_the_model_config(tiny_llama_dir):
    from transformers import AutoConfig

    per_token = kv_bytes_per_token(AutoConfig.from_pretrained(tiny_llama_dir), "bfloat16")
    assert per_token == 2 * 2 * 2 * 32 * 2  # K+V, 2 layers, 2 KV heads, head_dim 32, 2 bytes
    room = kv_headroom(1.0, 2**29, 0.25, per_token, 256)
    assert room["kv_tokens"] == (2**30 - 2**29 - 2**28) // per_token
    assert room["concurrent_sequences"] == room["kv_tokens"] // 256
    assert kv_headroom(None, 0, 0.5, per_token, 256)["concurrent_sequences"] is None


# GuideLLM runs in a fresh interpreter, as in a sweep's worker: started from this test session,
# its worker processes fail to unpickle stdio that other tests swapped ("cannot pickle EncodedFile").
LEVEL_SCRIPT = """
import json, sys
from pathlib import Path
from evals.load import LoadError, LoadSpec, run_level
try:
    out = run_level(LoadSpec(**json.loads(sys.argv[1])), int(sys.argv[2]), Path(sys.argv[3]))
except LoadError as exc:
    out = {"load_error": str(exc)}
print(json.dumps(out))
"""


def _level_in_fresh_process(load, streams: int, out: Path) -> dict:
    import dataclasses
    import json

    proc = subprocess.run([sys.executable, "-c", LEVEL_SCRIPT, json.dumps(dataclasses.asdict(load)), str(streams),
                           str(out)], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_real_transformers_serve_under_guidellm_load(tiny_llama_dir, tmp_path):
    """A real `transformers serve` on the tiny Llama, a bounded load at 1 and 2 streams, percentiles
    in order, and the process gone afterwards; then the same server killed mid-sweep is an error."""
    from evals.load import LoadSpec, warm_up

    serve = ServeConfig(kv_cache_tokens=1024)
    spec = launch("transformers", checkpoint=str(tiny_llama_dir), port=free_port(), fmt="dense", device="cpu",
                  serve=serve, threads=1)
    port = int(spec.command[spec.command.index("--port") + 1])
    with running_server(spec.command, port, tmp_path / "server.log", spec.health_path, 240, env=spec.env) as srv:
        pid = srv.pid
        warm_up(srv.base_url, spec.model_name, spec.request_format, 1)
        load = LoadSpec(base_url=srv.base_url, model_name=spec.model_name, tokenizer_dir=str(tiny_llama_dir),
                        request_format=spec.request_format, prompt_tokens=16, prompt_tokens_stdev=4,
                        output_tokens=8, output_tokens_stdev=2, exact_output_lengths=spec.exact_output_lengths,
                        requests=3, max_seconds=60)
        levels = [_level_in_fresh_process(load, streams, tmp_path / f"c{streams}.json") for streams in (1, 2)]
        os.killpg(pid, signal.SIGKILL)  # the server dies: the next level is an error, not a number
        srv.proc.wait()
        assert "load_error" in _level_in_fresh_process(load, 1, tmp_path / "dead.json")
    assert _gone(pid)
    for level in levels:
        assert level["requests_ok"] == 3 and level["errors"] == 0
        assert level["output_tokens"] > 0 and level["output_tokens_per_s"] > 0
        for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            p = level[metric]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"], (metric, p)
        assert level["ttft_ms"]["p99"] < level["e2e_ms"]["p99"]


def test_serve_gates_and_the_frontier_pick():
    from pipelines.signoff.frontier import pick_line
    from pipelines.signoff.gates import merge_gates
    from pipelines.signoff.serving import ServeEvidence, serve_gates

    gates = merge_gates({"min_capacity_rel": 1.0, "max_usd_per_m_rel": 0.9, "min_capacity": 2}, None)
    base = ServeEvidence(capacity=2, goodput_rps=1.0, usd_per_m=1.0, engine="transformers")
    better = ServeEvidence(capacity=4, goodput_rps=2.0, usd_per_m=0.5, engine="transformers")
    verdicts = {g.gate: g.verdict for g in serve_gates(base, better, gates)}
    assert verdicts == {"min_capacity": "PASS", "min_capacity_rel": "PASS", "max_usd_per_m_rel": "PASS"}
    zero = ServeEvidence(capacity=0, goodput_rps=0.0, usd_per_m=None, engine="transformers")
    verdicts = {g.gate: g.verdict for g in serve_gates(base, zero, gates)}
    assert verdicts == {"min_capacity": "FAIL", "min_capacity_rel": "FAIL", "max_usd_per_m_rel": "FAIL"}
    skipped = serve_gates(base, ServeEvidence(skip="not served: cannot serve 'compressed-tensors'"), gates)
    assert {g.verdict for g in skipped} == {"SKIPPED"} and "compressed-tensors" in skipped[0].note
    other_device = ServeEvidence(capacity=8, usd_per_m=0.1, engine="vllm", skip="served on cuda, the model's target is cpu")
    assert {g.verdict for g in serve_gates(base, other_device, gates)} == {"SKIPPED"}

    rows = [{"scheme": "baseline", "verdict": "BASELINE", "usd_per_m": 1.0, "capacity": 2, "engine": "transformers",
             "failed_gates": [], "serve_note": None},
            {"scheme": "gptq", "verdict": "PASS", "usd_per_m": 0.7, "capacity": 4, "engine": "transformers",
             "failed_gates": [], "serve_note": None},
            {"scheme": "nf4", "verdict": "PASS", "usd_per_m": 0.9, "capacity": 4, "engine": "transformers",
             "failed_gates": [], "serve_note": None},
            {"scheme": "int8", "verdict": "FAIL", "usd_per_m": 0.2, "capacity": 4, "engine": "transformers",
             "failed_gates": ["ppl_max_rel_increase[wikitext2]"], "serve_note": None}]
    assert pick_line(rows).startswith("Ship gptq: the cheapest scheme that passes every gate, $0.7")
    # Numbers the serve gates skip (here: an external endpoint's) rank nothing, however cheap.
    rows[1]["serve_note"] = "served by endpoint; on cpu this scheme's engine is transformers"
    assert pick_line(rows).startswith("Ship nf4: the cheapest scheme that passes every gate, $0.9")
    rows[2]["serve_note"] = rows[1]["serve_note"]
    assert "none has a serving cost that counts" in pick_line(rows)
    rows[1]["serve_note"] = rows[2]["serve_note"] = None
    rows[1]["verdict"] = rows[2]["verdict"] = "FAIL"
    line = pick_line(rows)
    assert line.startswith("No scheme passes every gate") and "int8: FAIL (ppl_max_rel_increase[wikitext2])" in line
