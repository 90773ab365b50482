"""One report, one story: the root/consequence link (Finding.id, Finding.caused_by) in the JSON, its
Schema, the terminal and the HTML report, each root first with its consequences folded under it."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from modeldebug.findings import fix, make_finding
from modeldebug.report.terminal import print_report
from modeldebug.types import Report, RunInfo


def _linked() -> Report:
    root = make_finding("gradient_accumulation", severity="high", message="Gradients are never zeroed.", step=1,
                        causes=["missing_zero_grad"], evidence={"stale_fraction": 1.0},
                        recommendations=[fix("Zero the gradients at the start of every training step.")])
    boom = make_finding("exploding_gradient", severity="high", message="The gradient norm rose.", step=40,
                        location="fc", causes=["missing_zero_grad", "learning_rate_too_high"],
                        evidence={"peak_grad_norm": 352826429538304.0, "baseline": 1.1322180032730103})
    nan = make_finding("nan_or_inf", severity="high", message="The gradients became NaN.", step=59,
                       causes=["missing_zero_grad"], confidence=0.95)
    low = make_finding("slow_operation", severity="low", message="One layer is slow.", location="fc")
    boom.id, boom.caused_by = "exploding_gradient", "gradient_accumulation"
    nan.id, nan.caused_by = "nan_or_inf", "exploding_gradient"
    root.id, low.id = "gradient_accumulation", "slow_operation"
    return Report(run=RunInfo(id="r1", status="completed", steps=100), findings=[low, nan, boom, root])


def test_the_link_is_in_the_json_and_its_schema():
    jsonschema = pytest.importorskip("jsonschema")
    report = _linked()
    data = json.loads(report.to_json())
    jsonschema.validate(data, Report.json_schema())
    by_kind = {f["kind"]: f for f in data["findings"]}
    assert by_kind["nan_or_inf"]["caused_by"] == "exploding_gradient"
    assert by_kind["exploding_gradient"]["caused_by"] == "gradient_accumulation"
    assert "caused_by" not in by_kind["gradient_accumulation"]  # a root: written only when set
    props = Report.json_schema()["$defs"]["Finding"]["properties"]
    assert {"id", "caused_by"} <= set(props) and "follows from" in props["caused_by"]["description"]
    assert Report.from_json(report.to_json()) == report


def test_stories_put_each_root_first():
    stories = _linked().stories()
    assert [s.root.kind for s in stories] == ["gradient_accumulation", "slow_operation"]
    assert [(c.finding.kind, c.depth) for c in stories[0].consequences] == [("exploding_gradient", 1), ("nan_or_inf", 2)]


def _terminal(report: Report) -> str:
    console = Console(record=True, width=110, color_system=None)
    print_report(report, console)
    return console.export_text()


def test_terminal_folds_consequences_under_their_root():
    text = _terminal(_linked())
    panels = re.findall(r"╭─ (\w+)\s+(\w+)", text)
    assert panels == [("HIGH", "gradient_accumulation"), ("LOW", "slow_operation")]  # one panel per root
    root_panel = text[text.index("gradient_accumulation"):text.index("╭─ LOW")]
    assert "follows from it (2):" in root_panel
    assert root_panel.index("exploding_gradient") < root_panel.index("nan_or_inf  (step 59)  ← exploding_gradient")
    assert re.search(r"│ {3}HIGH  exploding_gradient", root_panel)  # indented under the root
    assert re.search(r"│ {5}HIGH  nan_or_inf", root_panel)  # one level deeper
    assert "4 findings: 3 high, 1 low from 2 root causes" in text  # every finding still counted


def test_terminal_prints_evidence_rounded():
    text = _terminal(_linked())
    assert "peak_grad_norm=3.528e+14" in text and "baseline=1.132" in text
    assert "352826429538304" not in text and "1.1322180032730103" not in text


def test_html_shows_roots_first_with_consequences_folded_under_them():
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    from modeldebug.report.html import render_html

    page = render_html(_linked())
    articles = re.findall(r"<article[^>]*>", page)
    kinds = [re.search(r'data-kind="(\w+)"', a).group(1) for a in articles]
    assert kinds == ["gradient_accumulation", "exploding_gradient", "nan_or_inf", "slow_operation"]
    assert 'data-caused-by="gradient_accumulation"' in articles[1] and "consequence" in articles[1]
    assert 'data-caused-by="exploding_gradient"' in articles[2]
    assert "data-caused-by" not in articles[0] and 'id="finding-gradient_accumulation"' in articles[0]
    fold = page[page.index('<details class="consequences"'):page.index("</details>")]
    assert "2 findings follow from gradient_accumulation" in fold
    assert 'data-kind="exploding_gradient"' in fold and 'data-kind="nan_or_inf"' in fold
    assert 'follows from <a href="#finding-exploding_gradient">exploding_gradient</a>' in fold
    assert 'data-kind="slow_operation"' not in fold
