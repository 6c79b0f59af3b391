"""A sweep of the baseline alone is a normal use (e.g. to check a new task).

A real sweep of the tiny Llama with ``--schemes baseline`` runs every stage, finishes, and
exits 0 with a sign-off that says there was nothing to sign off, not 4 (INCOMPLETE). A baseline
whose stage failed still makes the sweep INCOMPLETE.
"""

from __future__ import annotations

import json

import pytest

from pipelines import cli
from pipelines.errors import EXIT_INCOMPLETE, EXIT_PASS
from pipelines.signoff.gates import Gates
from pipelines.signoff.outcome import NOTHING_TO_SIGN_OFF
from pipelines.signoff.verdict import signoff

# Every stage, as small as it gets on the tiny Llama (seconds on 2 cores).
SMALL = ["--set", "perplexity={seq_len: 64, max_windows: 1, fidelity: null}",
         "--set", "benchmark={batch_sizes: [1], prompt_lens: [8], gen_lens: [2], iters: 1, warmup: 0, min_time_s: 0}",
         "--set", "serve.enabled=false"]


def test_a_baseline_only_sweep_exits_0_and_says_there_was_nothing_to_sign_off(runs, tiny_llama_dir, capsys):
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), "--schemes", "baseline",
                     "--suite", "smoke", "--tasks", "", *SMALL])
    out = capsys.readouterr()
    mdir = runs / tiny_llama_dir.name
    stages = json.loads((mdir / "baseline" / "manifest.json").read_text())["stages"]
    assert {s: e["status"] for s, e in stages.items() if s != "serve"} == dict.fromkeys(
        ("quantize", "evaluate", "benchmark"), "done"), out.err
    assert code == EXIT_PASS, out.out + out.err
    result = json.loads((mdir / "signoff.json").read_text())
    assert (result["overall"], result["exit_code"]) == (NOTHING_TO_SIGN_OFF, 0)
    assert result["verdicts"] == {"baseline": "BASELINE"}
    assert "nothing to sign off" in result["note"]
    assert f"sign-off: {NOTHING_TO_SIGN_OFF} (exit code 0)" in out.out
    assert NOTHING_TO_SIGN_OFF in (mdir / "signoff.md").read_text()
    assert NOTHING_TO_SIGN_OFF in (mdir / "signoff.html").read_text()


@pytest.fixture
def baseline():
    from pipelines.signoff.evidence import SchemeEvidence

    return SchemeEvidence(scheme="baseline")


def test_the_verdict_of_a_baseline_alone(baseline):
    result = signoff(baseline, [], Gates())
    assert (result["overall"], result["exit_code"]) == (NOTHING_TO_SIGN_OFF, EXIT_PASS)
    assert result["verdicts"] == {"baseline": "BASELINE"}
    # The baseline could not be judged: the sweep did not finish, whatever else.
    failed = signoff(None, [], Gates(), not_judged={"baseline": "benchmark: failed"})
    assert (failed["overall"], failed["exit_code"]) == ("INCOMPLETE", EXIT_INCOMPLETE)
    assert failed["not_judged"] == {"baseline": "benchmark: failed"}


@pytest.fixture
def tracking_server_answering_401(monkeypatch):
    """An MLflow URL behind an auth proxy that refuses every request with HTTP 401."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            body = b'{"error_code": "UNAUTHENTICATED", "message": "credentials required"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = _refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()
    server.server_close()


@pytest.mark.slow  # two real sweeps
def test_an_mlflow_error_costs_no_model_its_sign_off_or_its_exit_code(runs, tiny_llama_dir, tmp_path, capsys,
                                                                      tracking_server_answering_401):
    """MODEL=a,b with an MLflow that answers 401: both models are signed off, the exit code is the
    verdicts' (before, the first model's tracking error was a crash, exit 5, and b had no sign-off)."""
    import shutil

    other = tmp_path / "tiny-b"
    shutil.copytree(tiny_llama_dir, other)
    code = cli.main(["run", "--quiet", "--model", f"{tiny_llama_dir},{other}", "--schemes", "baseline",
                     "--suite", "smoke", "--tasks", "", *SMALL])
    out = capsys.readouterr()
    assert code == EXIT_PASS, out.out + out.err[-3000:]
    for name in (tiny_llama_dir.name, other.name):
        assert json.loads((runs / name / "signoff.json").read_text())["overall"] == NOTHING_TO_SIGN_OFF
        assert json.loads((runs / name / "sweep.json").read_text())["mlflow"]["synced"] is False  # for qeval sync
    assert out.out.count("MLflow error, not an outage") == 2 and "qeval sync" in out.out
