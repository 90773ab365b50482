"""The HTML report in a real browser: headless Chromium opens it, every plot draws, the console stays
clean, and markup handed to the report shows as text (no dialog, no injected element).

Runs where Debian's chromium is installed (`.ci/run` installs it). Set MODELDEBUG_SCREENSHOTS=DIR
to keep the screenshots for a look.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

from cdp import CHROMIUM, Browser  # noqa: E402

from modeldebug.report.html import write_html  # noqa: E402

XSS = "<img src=x onerror=alert(1)>"  # as in conftest.py

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: apt-get install chromium")

# For each image: loaded, has a size, and painted something (non-white pixels when drawn on a canvas).
PLOTS_DREW = """
Promise.all([...document.images].map(async img => {
  await img.decode().catch(() => null);
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  let ink = 0;
  if (c.width && c.height) {
    const ctx = c.getContext('2d');
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, c.width, c.height);
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) ink++;
  }
  const r = img.getBoundingClientRect();
  return {alt: img.alt, cls: img.className, complete: img.complete, w: img.naturalWidth, shown: r.width > 50 && r.height > 50,
          ink: ink / Math.max(1, c.width * c.height)};
}))
"""


@pytest.fixture(scope="module")
def browser():
    b = Browser(width=1280, height=900)
    try:
        yield b
    finally:
        b.close()


def _keep(shot: Path) -> None:
    keep = os.environ.get("MODELDEBUG_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


@pytest.mark.parametrize("which", ["dead_report", "nan_report"])
def test_every_plot_draws_and_the_console_is_clean(which, request, browser, tmp_path):
    report = request.getfixturevalue(which)
    page = tmp_path / f"{which}.html"
    write_html(report, page)
    browser.open(page)
    images = browser.evaluate(PLOTS_DREW)
    assert len(images) >= 5
    assert all(i["cls"] == "chart" for i in images)
    bad = [i for i in images if not (i["complete"] and i["w"] > 0 and i["shown"] and i["ink"] > 0.005)]
    assert bad == []
    assert browser.evaluate("document.querySelectorAll('article.finding').length") == len(report.findings)
    shot = tmp_path / f"{which}.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 20_000
    _keep(shot)
    assert browser.errors() == []
    assert browser.dialogs() == []


def test_markup_in_the_report_shows_as_text(dead_report, browser, tmp_path):
    page = tmp_path / "xss.html"
    write_html(dead_report, page, issue=XSS)  # the module named like markup is in dead_report already
    browser.open(page)
    text = browser.evaluate("document.body.innerText")
    assert f"issue: {XSS}" in text
    assert XSS in browser.evaluate("document.querySelector('article.finding code').textContent") or XSS in text
    # nothing the report was handed became an element: every <img> is one of ours, no <script> at all
    assert browser.evaluate("[...document.images].every(i => i.className === 'chart' && i.src.startsWith('data:image/svg+xml'))")
    assert browser.evaluate("document.scripts.length") == 0
    assert browser.dialogs() == []
    assert browser.errors() == []
