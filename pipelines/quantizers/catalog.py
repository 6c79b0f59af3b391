"""The scheme table of docs/schemes.md, rendered from the registry and recipes/schemes.

A test checks that docs/schemes.md holds exactly this table between the markers
below, so a new scheme (module, registry line, YAML) shows up by regenerating
it: ``python -m pipelines.quantizers.catalog``.
"""

from __future__ import annotations

from pipelines.quantizers import get_quantizer

START_MARKER = "<!-- schemes:start -->"
END_MARKER = "<!-- schemes:end -->"


def _bits(quantizer, params) -> str:
    bits = quantizer.weight_bits(params)
    if bits is not None:
        return str(bits)
    if quantizer.is_reference:
        return "model dtype"
    return "as published" if quantizer.prequantized else "-"


def scheme_rows() -> list[tuple[str, str, str, str, str]]:
    """(scheme, library, weight bits, checkpoint format, description) for every scheme recipe, by name."""
    from pipelines.recipes import available, load_scheme

    rows = []
    for name in available("schemes"):
        scheme = load_scheme(name)
        quantizer = get_quantizer(scheme.quantizer)
        params = quantizer.parse_params(scheme.params, f"recipes/schemes/{name}.yaml params")
        description = " ".join(scheme.description.split()).replace("|", "\\|")
        rows.append((f"`{name}`", quantizer.library, _bits(quantizer, params), quantizer.format, description))
    return rows


def scheme_table() -> str:
    """The markdown table, markers included, ending with a newline."""
    lines = [START_MARKER, "| Scheme | Library | Bits | Format | Description |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in scheme_rows()]
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def marked_table(text: str) -> str | None:
    """The block between the markers in ``text`` (markers included), or None if absent."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        return None
    return text[start : end + len(END_MARKER)] + "\n"


if __name__ == "__main__":
    print(scheme_table(), end="")
