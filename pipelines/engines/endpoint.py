"""A server the user already runs: qeval only drives load against its base URL."""

from __future__ import annotations

from pipelines.engines.base import EngineLaunch
from pipelines.errors import QevalError


def served_model(base_url: str) -> str:
    import requests

    try:
        data = requests.get(base_url.rstrip("/") + "/v1/models", timeout=10).json()
        return data["data"][0]["id"]
    except Exception as exc:  # unreachable, not OpenAI-compatible, or no model listed
        raise QevalError(f"cannot list the models of the endpoint {base_url} ({exc}); check the URL, or set "
                         "serve.endpoint_model") from None


def launch(*, serve, **_) -> EngineLaunch:
    url = serve.endpoint.rstrip("/")
    model = serve.endpoint_model or served_model(url)
    return EngineLaunch(engine="endpoint", version="external", command=None, model_name=model,
                        health_path="/v1/models", base_url=url, settings={"endpoint": url})
