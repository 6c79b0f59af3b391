"""A model recipe's ``trust_remote_code`` reaches every transformers load the quantize stage makes."""

from __future__ import annotations

import transformers
import yaml

from pipelines.execution.local import run_stages_in_process
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.rundir import scheme_dir


def _spy(monkeypatch, cls, calls: list) -> None:
    """Wrap ``cls.from_pretrained``: record each call's kwargs, then do the real load."""
    real = cls.from_pretrained

    def recorded(*args, **kwargs):
        calls.append((cls.__name__, args[0] if args else None, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", recorded)


def test_trust_remote_code_reaches_every_load(tmp_path, recipes, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    recipe = {"source": str(tiny_llama_dir), "dtype": "float32", "default_suite": "smoke",
              "target_device": "cpu", "trust_remote_code": True}
    (recipes / "models" / "tiny-remote.yaml").write_text(yaml.safe_dump(recipe))
    opts = SweepOptions(model="tiny-remote", schemes=["int8-wo"], suite="smoke", tasks=[], quiet=True)
    p = plan(opts)
    write_plan(p, opts)

    calls: list = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        _spy(monkeypatch, cls, calls)
    # int8-wo: quantize-on-load through transformers, a reference load and a checkpoint reload.
    assert run_stages_in_process(p.model, "int8-wo", ("quantize",), quiet=True) == 0
    assert scheme_dir(p.model, "int8-wo").layer_errors_csv.is_file()

    model_loads = [c for c in calls if c[0] == "AutoModelForCausalLM"]
    assert len(model_loads) >= 3, calls  # source (quantize), reference, reload of the checkpoint
    assert any(c[0] == "AutoTokenizer" for c in calls) and any(c[0] == "AutoConfig" for c in calls)
    missing = [(name, source) for name, source, kwargs in calls if kwargs.get("trust_remote_code") is not True]
    assert not missing, f"loads without trust_remote_code=True: {missing}"
