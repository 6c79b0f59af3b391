"""`--endpoint`: a server someone else runs is checked, authenticated, and never leaks a secret.

Once, the serve stage took the first model an endpoint listed and compared it with nothing, sent
no API key (so users put credentials in the URL, which landed in recipe.yaml, serve.json, MLflow
and the log), and ran https load without verifying the certificate. The real endpoint here is a
llama-server started by the test, with an API key, serving the embedded model's GGUF.
"""

from __future__ import annotations

import json

import pytest

from pipelines import cli
from pipelines.errors import EXIT_BAD_INPUT, EXIT_PASS

KEY = "s3cret-endpoint-key"
SMALL_LOAD = ["--set", "serve={levels: [1], requests_per_level: 2, warmup_requests: 1, prompt_tokens: 16, "
                       "prompt_tokens_stdev: 0, output_tokens: 4, output_tokens_stdev: 0, max_seconds_per_level: 60}",
              "--suite", "smoke", "--tasks", ""]


@pytest.mark.parametrize("url,named", [
    ("http://user:pw-secret@127.0.0.1:8000", ["credentials", "serve.api_key_env"]),
    ("http://127.0.0.1:8000/?api_key=abc-secret", ["query string", "serve.api_key_env"]),
    ("ftp://127.0.0.1:8000", ["http:// or https://"]),
])
def test_an_endpoint_url_that_would_store_a_secret_is_bad_input(url, named, capsys, runs, tiny_llama_dir):
    code = cli.main(["plan", "--no-track", "--model", str(tiny_llama_dir), "--schemes", "baseline",
                     "--endpoint", url])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and all(n in err for n in named), err
    assert "secret" not in err  # the refusal does not echo what it refuses to store
    assert not runs.exists()


@pytest.fixture(scope="module")
def llama_server_with_key():
    """A real llama-server on 127.0.0.1, serving the embedded model's GGUF, that wants a Bearer key."""
    from pipelines.engines.process import free_port, running_server
    from pipelines.errors import UnsupportedHere
    from pipelines.llamacpp.convert import embedded_gguf
    from pipelines.llamacpp.tools import tool_path

    try:
        binary = tool_path("llama-server")
    except UnsupportedHere as exc:
        pytest.skip(str(exc))
    port = free_port()
    cmd = [str(binary), "-m", str(embedded_gguf()), "--host", "127.0.0.1", "--port", str(port), "-t", "1",
           "-c", "512", "--no-webui", "--api-key", KEY]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as log_dir, running_server(
            cmd, port, Path(log_dir) / "server.log", "/health", 120, env={"LD_LIBRARY_PATH": str(binary.parent)}):
        yield f"http://127.0.0.1:{port}"


def serve_stage(model: str, url: str, *extra: str) -> int:
    assert cli.main(["quantize", "--quiet", "--model", model, "--scheme", "baseline",
                     *SMALL_LOAD]) == EXIT_PASS
    return cli.main(["serve", "--quiet", "--model", model, "--scheme", "baseline", "--endpoint", url,
                     *SMALL_LOAD, *extra])


@pytest.mark.slow  # a real llama-server
def test_an_endpoint_without_the_key_or_serving_another_model_is_refused_with_the_reason(
        llama_server_with_key, runs, tiny_llama_dir, capsys, monkeypatch):
    assert serve_stage(str(tiny_llama_dir), llama_server_with_key) == EXIT_BAD_INPUT
    assert "refused the request (HTTP 401)" in capsys.readouterr().err

    monkeypatch.setenv("ENDPOINT_KEY", KEY)
    assert serve_stage(str(tiny_llama_dir), llama_server_with_key, "--set", "serve.api_key_env=ENDPOINT_KEY") \
        == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "the endpoint serves another model" in err and "n_vocab 49152 (this model: 1024)" in err

    monkeypatch.delenv("ENDPOINT_KEY")
    assert serve_stage(str(tiny_llama_dir), llama_server_with_key, "--set", "serve.api_key_env=ENDPOINT_KEY") \
        == EXIT_BAD_INPUT
    assert "ENDPOINT_KEY, which is not set" in capsys.readouterr().err


@pytest.mark.slow  # a real llama-server and GuideLLM load
def test_the_right_model_with_its_key_is_measured_and_the_key_is_stored_nowhere(
        llama_server_with_key, runs, capsys, monkeypatch):
    monkeypatch.setenv("ENDPOINT_KEY", KEY)
    code = serve_stage("smollm2-135m", llama_server_with_key, "--set", "serve.api_key_env=ENDPOINT_KEY")
    out = capsys.readouterr()
    assert code == EXIT_PASS, out.err[-3000:]
    sdir = runs / "smollm2-135m" / "baseline"
    serve = json.loads((sdir / "serve" / "serve.json").read_text())
    settings = serve["engine_settings"]
    assert settings["served_model_check"] == "checked: n_vocab 49152, n_embd 576 match the model"
    assert settings["served_model"]["meta"]["n_params"] == 134_515_008
    assert settings["authenticated"] is True and settings["verify_tls"] is True
    assert serve["levels"][0]["requests_ok"] == 2
    for path in sdir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".log", ".jsonl"):
            assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in out.out + out.err  # nor in the log
