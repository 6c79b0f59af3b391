"""The sign-off rendered as Markdown and as self-contained HTML that a browser opens cleanly."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.signoff import report
from pipelines.signoff.evidence import PerplexityEvidence, SchemeEvidence
from pipelines.signoff.gates import Gates
from pipelines.signoff.verdict import signoff as judge

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '<script>alert("x")</script> & | pipe'


def _evidence(name: str, arc: np.ndarray, nll: np.ndarray, **cost) -> SchemeEvidence:
    return SchemeEvidence(
        scheme=name,
        perplexity={"wikitext2": PerplexityEvidence(window_nll=nll.tolist(), ppl=float(np.exp(nll.mean())))},
        task_samples={"arc_easy": [{"doc_id": i, "acc": int(a)} for i, a in enumerate(arc)]},
        **cost,
    )


@pytest.fixture(scope="module")
def signoff() -> dict:
    rng = np.random.default_rng(0)
    arc = (rng.random(300) < 0.7).astype(int)
    nll = rng.normal(3.0, 0.4, 60)
    worse = arc.copy()
    worse[np.flatnonzero(arc)[:60]] = 0
    near = arc.copy()
    near[np.flatnonzero(arc)[:1]] = 0
    baseline = _evidence("bf16", arc, nll)
    schemes = [
        _evidence(
            "fp8",
            arc,
            nll + 0.002,
            weights_gib=0.15,
            cost_representative=False,
            cost_note="torchao FP8 emulated on CPU",
        ),
        _evidence("gptq-w4", worse, nll + 0.3, weights_gib=0.08),
        _evidence("awq-w4", near, nll + 0.001, weights_gib=0.08),
    ]
    gates = Gates(acc_min_recovery=0.997, max_weights_gib=0.1)
    return judge(baseline, schemes, gates)


@pytest.fixture(scope="module")
def context() -> dict:
    return {
        "model": "SmolLM2-135M",
        "suite": "quick",
        "git_commit": "0123abc-dirty",
        "generated_at": "2025-01-01T00:00:00Z",
        "protocols": {
            "perplexity": {
                "wikitext2": {
                    "source": {"kind": "local", "path": "wikitext-2-raw/wiki.test.raw"},
                    "protocol": "gptq",
                    "seq_len": 512,
                    "n_windows": 60,
                }
            },
            "tasks": {"arc_easy": {"limit": 300, "n_samples": 300, "num_fewshot": 0}},
        },
        "library_versions": {"torch": "2.13.0", "transformers": "5.17.0"},
        "hardware": {"cpu_model": "test CPU", "cpu_count": 2, "gpu_name": None},
        "caveats": ["Cost of fp8 comes from CPU emulation.", HOSTILE],
        "pareto_png": "pareto.png",
    }


@pytest.fixture(scope="module")
def pareto_png(tmp_path_factory) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    ax.scatter([0.25, 0.15, 0.08, 0.08], [20.1, 20.2, 26.0, 20.15], c=["C0", "C1", "C3", "C2"])
    for x, y, name in zip(
        [0.25, 0.15, 0.08, 0.08],
        [20.1, 20.2, 26.0, 20.15],
        ["bf16", "fp8", "gptq-w4", "awq-w4"],
        strict=True,
    ):
        ax.annotate(name, (x, y))
    ax.set_xlabel("weights GiB")
    ax.set_ylabel("wikitext2 ppl")
    path = tmp_path_factory.mktemp("pareto") / "pareto.png"
    fig.savefig(path)
    plt.close(fig)
    return path


@pytest.fixture(scope="module")
def html_file(signoff, context, pareto_png, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "signoff.html"
    path.write_text(report.render_html(signoff, context, pareto_png), encoding="utf-8")
    return path


def test_markdown_has_the_verdict_and_gate_tables(signoff, context):
    md = report.render_markdown(signoff, context)
    assert md.startswith("# qeval sign-off — SmolLM2-135M\n")
    assert "**Overall: FAIL** (exit code 1)" in md
    assert "| Scheme | Verdict | Pass | Fail | Inconclusive | Skipped | Note |" in md
    for scheme, verdict in signoff["verdicts"].items():
        assert re.search(rf"^\| {re.escape(scheme)} \| {verdict} \|", md, re.M), scheme
    assert re.search(r"^\| gptq-w4 \| ppl_max_rel_increase\[wikitext2\] \|.*\| FAIL \|", md, re.M)
    assert "torchao FP8 emulated on CPU" in md
    assert "![Pareto plot" in md and "(pareto.png)" in md
    assert "| wikitext2 | kind=local, path=wikitext-2-raw/wiki.test.raw | gptq | 512 | 60 |" in md
    # A pipe in free text must not split a table cell; angle brackets must not become HTML.
    assert "\\| pipe" in md and "<script>" not in md


def test_html_has_title_verdict_rows_and_gate_table(signoff, html_file):
    text = html_file.read_text(encoding="utf-8")
    parser = _TableParser()
    parser.feed(text)
    assert parser.title == "qeval sign-off — SmolLM2-135M"
    assert parser.rows["verdicts"] == [[s["scheme"], s["verdict"]] for s in signoff["schemes"]]
    n_gates = sum(len(s["gates"]) for s in signoff["schemes"])
    assert len(parser.rows["gates"]) == n_gates > 0


def test_html_is_self_contained_and_escapes_text(html_file):
    text = html_file.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert 'src="data:image/png;base64,' in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; | pipe" in text


def test_html_without_a_pareto_plot_says_so(signoff, context):
    text = report.render_html(signoff, context, None)
    assert "No Pareto plot was produced." in text and "data:image" not in text


@pytest.fixture(scope="module")
def incomplete() -> dict:
    """One scheme judged (an inconclusive gate the dataset cannot settle), one NOT JUDGED."""
    arc = (np.random.default_rng(1).random(300) < 0.7).astype(int)
    near = arc.copy()
    near[np.flatnonzero(arc)[:1]] = 0
    nll = np.random.default_rng(2).normal(3.0, 0.4, 60)
    baseline = _evidence("bf16", arc, nll)
    baseline.task_sizes["arc_easy"] = 300  # every example was scored: more do not exist
    gates = Gates(acc_min_recovery=0.997, acc_min_recovery_avg=None)
    return judge(baseline, [_evidence("awq-w4", near, nll)], gates,
                 not_judged={"gptq-w4": "benchmark: failed: RuntimeError: out of memory <bs 8>"},
                 order=["gptq-w4", "awq-w4"])


def test_not_judged_schemes_get_their_own_section_and_an_incomplete_overall(incomplete, context):
    md = report.render_markdown(incomplete, context)
    assert "**Overall: INCOMPLETE** (exit code 4)" in md
    assert re.search(r"^\| gptq-w4 \| NOT JUDGED \|", md, re.M)
    section = md.split("## Not judged", 1)[1].split("## Gates", 1)[0]
    assert "| gptq-w4 | benchmark: failed: RuntimeError: out of memory &lt;bs 8&gt; |" in section
    text = report.render_html(incomplete, context, None)
    parser = _TableParser()
    parser.feed(text)
    assert parser.rows["not-judged"] == [["gptq-w4", "benchmark: failed: RuntimeError: out of memory <bs 8>"]]
    assert parser.rows["verdicts"] == [["bf16", "BASELINE"], ["gptq-w4", "NOT JUDGED"], ["awq-w4", "INCONCLUSIVE"]]
    assert 'class="verdict v-not-judged"' in text and 'class="verdict v-incomplete"' in text


def test_a_gate_the_dataset_cannot_settle_says_so_instead_of_a_count(incomplete, context):
    md = report.render_markdown(incomplete, context)
    row = next(line for line in md.splitlines() if line.startswith("| awq-w4 | acc_min_recovery[arc_easy]"))
    assert "more than the dataset has (300)" in row and "cannot be settled with this dataset" in row
    assert "≈" not in row


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
)
def test_html_renders_in_chromium(signoff, html_file, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    shot_run = _chromium(
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--enable-logging=stderr",
        "--v=0",
        html_file.as_uri(),
    )
    assert "Uncaught" not in shot_run.stderr, shot_run.stderr[-2000:]
    assert shot.is_file(), shot_run.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, tables, verdict badges and the plot

    dom_run = _chromium(tmp_path / "profile-dom", "--dump-dom", html_file.as_uri())
    parser = _TableParser()
    parser.feed(dom_run.stdout)
    assert parser.title == "qeval sign-off — SmolLM2-135M"
    assert parser.rows["verdicts"] == [[s["scheme"], s["verdict"]] for s in signoff["schemes"]]


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir()
    try:
        return subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class _TableParser(html.parser.HTMLParser):
    """Collect the <title> and, per table id, the first two cells' text of each body row."""

    def __init__(self):
        super().__init__()
        self.title = ""
        self.rows: dict[str, list[list[str]]] = {}
        self._in_title = False
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "table":
            self._table = attrs.get("id")
            if self._table:
                self.rows[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows[self._table].append(self._row[:2])
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
