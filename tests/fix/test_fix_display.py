"""`modeldebug fix` shown: each verified fix next to the finding it fixes, its before/after loss on
one plot in the HTML, the best one's diff in the terminal (issue 18). Reports built by hand."""

from __future__ import annotations

import base64
import html
import re

import pytest
from rich.console import Console

from modeldebug.fixes.show import by_finding, print_session
from modeldebug.fixes.verify import FixSession, Window
from modeldebug.metrics import Series
from modeldebug.types import Finding, Fix, Report, RunInfo

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

from modeldebug.report.html import render_html  # noqa: E402

DIFF = """--- a/train.py
+++ b/train.py
@@ -1,3 +1,3 @@
 model = Net()
-optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
+optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
 for x, y in loader:
"""
EVIL = "<img src=x onerror=alert(1)>"


def _report() -> Report:
    steps = list(range(40))
    report = Report(
        run=RunInfo(id="probe", command=["python", "train.py"], status="completed", steps=40),
        findings=[Finding(kind="loss_not_decreasing", severity="high", confidence=0.9, step=10,
                          message="The loss stopped decreasing. It stays near 1.6.", causes=["learning_rate_too_high"]),
                  Finding(kind="dead_relu", severity="medium", confidence=0.8, location="net.1", step=5,
                          message="Most units of net.1 are dead.")],
        metrics={"series": {"step": steps, "loss": [1.6 - 0.001 * s for s in steps]}},
    )
    report.fixes = [
        Fix(addresses=["loss_not_decreasing"], change="learning rate x0.01 " + EVIL, verified=True,
            reason="loss_not_decreasing gone, no new finding", loss_before=1.6, loss_after=0.34, patch=DIFF,
            seconds=3.2, loss_curve=Series(step=steps, loss=[1.6 * 0.95 ** s for s in steps])),
        Fix(addresses=["loss_not_decreasing", "dead_relu"], change="clip the gradient norm", verified=False,
            reason="still found: loss_not_decreasing; no diff: backward() is called inside a library (lightning)",
            loss_before=1.6, loss_after=1.59, seconds=3.0),
        Fix(addresses=["exploding_gradient"], change="something for a consequence", verified=False, reason="x"),
    ]
    return report


def test_fixes_go_under_the_first_root_they_address_and_the_rest_last():
    report = _report()
    groups = by_finding(report, report.fixes)
    assert [(f.kind if f else None, [x.change[:10] for x in fixes]) for f, fixes in groups] == [
        ("loss_not_decreasing", ["learning r", "clip the g"]), (None, ["something "])]


def test_the_terminal_shows_each_root_with_its_fixes_and_the_best_diff():
    report = _report()
    session = FixSession(Window(report, 0, 1.0), fixes=report.fixes, verdict="1 of 3 candidate fixes verified", seconds=9.0)
    out = Console(record=True, width=200, color_system=None)
    print_session(session, out)
    text = out.export_text()
    assert text.index("HIGH loss_not_decreasing: The loss stopped decreasing") < text.index("VERIFIED  learning rate x0.01")
    assert text.index("VERIFIED") < text.index("rejected  clip the gradient norm")
    assert "the best verified fix as a diff (git apply):" in text
    assert "+optimizer = torch.optim.Adam(model.parameters(), lr=0.01)" in text
    assert text.rstrip().endswith("every candidate re-run one at a time)")


def test_the_html_puts_the_verified_fix_next_to_its_finding_with_both_curves_and_the_diff():
    page = render_html(_report())
    findings = page.index('<section id="findings">')
    root = page.index('data-kind="loss_not_decreasing"', findings)
    box = re.search(r'<div class="fix verified" data-addresses="loss_not_decreasing">.*?</div>\n</div>', page[root:], re.S)
    assert box and root < page.index('data-kind="dead_relu"', findings)  # the fix sits between the two findings
    assert page.index(box.group(0)) < page.index('data-kind="dead_relu"', findings)
    fix = box.group(0)
    assert '<span class="add">+optimizer = torch.optim.Adam(model.parameters(), lr=0.01)</span>' in fix
    svg = base64.b64decode(re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', fix).group(1)).decode()
    assert "before: the script unfixed" in svg and "after: learning rate x0.01" in svg
    assert svg.count("<path") >= 2
    # every candidate tried, in the fixes section; user text escaped
    section = page[page.index('<section id="fixes">'):]
    assert section.count('<div class="fix') == 3 and "no diff: backward() is called inside a library" in section
    assert "<img src=x" not in page and html.escape(EVIL, quote=False) in page


def test_the_terminal_never_folds_the_diff():
    report = _report()
    long = DIFF.replace("lr=0.01)", "lr=0.01)" + "  # " + "x" * 150)
    report.fixes[0].patch = long
    out = Console(record=True, width=60, color_system=None)
    print_session(FixSession(Window(report, 0, 1.0), fixes=report.fixes, verdict="v", seconds=1.0), out)
    assert long.splitlines()[5] in out.export_text().splitlines()


def test_a_fix_of_two_roots_sits_under_the_first_only():
    report = _report()
    report.fixes[0].addresses = ["loss_not_decreasing", "dead_relu"]
    page = render_html(report)
    findings = page[page.index('<section id="findings">'):page.index('<section id="fixes">')]
    assert findings.count('<div class="fix verified"') == 1
    assert findings.index('<div class="fix verified"') < findings.index('data-kind="dead_relu"')
