"""Gate thresholds are finite and serve values are bounded, refused at planning.

``ppl_max_rel_increase: .inf`` used to pass every scheme, and ``serve.levels: [1, 1000000]``
became ``llama-server --parallel 1000000``. Both are bad input now: exit 2 from ``qeval plan``
with the gate or field named, before any work.
"""

from __future__ import annotations

import math

import pytest
import yaml

from pipelines import cli
from pipelines.errors import EXIT_BAD_INPUT, QevalError
from pipelines.recipes.resolve import validate
from pipelines.recipes.serving import MAX_LEVEL, ServeConfig
from pipelines.signoff.gates import merge_gates


def plan_code(capsys, model, *extra: str) -> tuple[int, str]:
    code = cli.main(["plan", "--model", str(model), "--schemes", "baseline", "--suite", "smoke", "--tasks", "",
                     *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("setting", "named"), [
    ("gates.ppl_max_rel_increase=.inf", "ppl_max_rel_increase = inf"),
    ("gates.ppl_max_rel_increase={wikitext2: .nan}", "ppl_max_rel_increase.wikitext2 = nan"),
    ("gates.min_decode_rel={bs: 1, value: .inf}", "min_decode_rel.value = inf"),
    ("gates.kl_max_mean={floor_x: .inf}", "kl_max_mean.floor_x = inf"),
    ("gates.acc_max_drop_points=-.inf", "acc_max_drop_points = -inf"),
])
def test_qeval_plan_refuses_a_non_finite_gate_naming_it(capsys, runs, tiny_llama_dir, setting, named):
    code, err = plan_code(capsys, tiny_llama_dir, "--set", setting)
    assert code == EXIT_BAD_INPUT, err
    assert named in err and "finite" in err and "null to disable" in err, err
    assert not runs.exists()


def test_a_model_override_cannot_make_a_gate_infinite():
    with pytest.raises(QevalError, match=r"the gates after the model override: max_weights_rel = inf"):
        merge_gates({"max_weights_rel": 0.6}, {"max_weights_rel": math.inf})


def test_text_that_reads_as_infinity_is_refused_too():
    with pytest.raises(QevalError, match=r"acc_min_recovery: Input should be a finite number"):
        merge_gates({"acc_min_recovery": "inf"}, None)


def test_finite_gates_and_null_still_work():
    gates = merge_gates({"ppl_max_rel_increase": {"wikitext2": 0.05, "c4": None}, "kl_max_mean": {"floor_x": 20}},
                        {"acc_min_recovery": None})
    assert gates.perplexity_thresholds(["wikitext2", "c4"]) == {"wikitext2": 0.05}
    assert gates.acc_min_recovery is None


@pytest.mark.parametrize(("setting", "named"), [
    ("serve.levels=[1, 1000000]", "serve.levels.1: Input should be less than or equal to 4096"),
    ("serve.max_seconds_per_level=.inf", "serve.max_seconds_per_level: Input should be a finite number"),
    ("serve.start_timeout_s=.nan", "serve.start_timeout_s: Input should be a finite number"),
    ("serve.saturation_gain=.inf", "serve.saturation_gain: Input should be a finite number"),
    ("serve.requests_per_level=1000000000", "serve.requests_per_level: Input should be less than or equal to"),
    ("serve.threads=100000", "serve.threads: Input should be less than or equal to 1024"),
    ("serve.kv_cache_tokens=1000000000000", "serve.kv_cache_tokens: Input should be less than or equal to"),
])
def test_qeval_plan_refuses_unbounded_serve_values(capsys, runs, tiny_llama_dir, setting, named):
    code, err = plan_code(capsys, tiny_llama_dir, "--set", setting)
    assert code == EXIT_BAD_INPUT, err
    assert named in err, err
    assert not runs.exists()


def test_a_suite_file_with_unbounded_levels_names_the_file(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"levels": [1, MAX_LEVEL + 1]}))
    with pytest.raises(QevalError, match=rf"suite\.yaml: levels\.1: Input should be less than or equal to {MAX_LEVEL}"):
        validate(ServeConfig, yaml.safe_load(path.read_text()), str(path))
    assert validate(ServeConfig, {"levels": [1, MAX_LEVEL]}, "x").levels == [1, MAX_LEVEL]
