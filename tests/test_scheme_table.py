"""docs/schemes.md's scheme table is the one rendered from the registry and recipes/schemes."""

from __future__ import annotations

import yaml
from helpers import REPO_ROOT

from pipelines.quantizers.catalog import END_MARKER, START_MARKER, marked_table, scheme_table


def test_the_scheme_docs_hold_the_generated_scheme_table():
    page = (REPO_ROOT / "docs" / "schemes.md").read_text(encoding="utf-8")
    found = marked_table(page)
    assert found is not None, f"docs/schemes.md has no {START_MARKER} ... {END_MARKER} block"
    assert found == scheme_table(), (
        "docs/schemes.md's scheme table is out of date: replace the block between the markers with the output "
        "of `python -m pipelines.quantizers.catalog`"
    )


def test_a_new_scheme_recipe_appears_in_the_table(recipes):
    before = scheme_table()
    assert "| `int8-wo` | torchao | 8 | torchao |" in before
    assert "| `gptq-w8` | gptqmodel | 8 | gptq |" in before and "| `gptq` | gptqmodel | 4 | gptq |" in before
    (recipes / "schemes" / "gptq-g32.yaml").write_text(yaml.safe_dump(
        {"description": "GPTQ 4-bit, group size 32", "quantizer": "gptq", "params": {"bits": 4, "group_size": 32}}))
    after = scheme_table()
    assert "| `gptq-g32` | gptqmodel | 4 | gptq | GPTQ 4-bit, group size 32 |" in after
    assert len(after.splitlines()) == len(before.splitlines()) + 1
