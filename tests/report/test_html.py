"""The HTML report: drawn from real reports, escaped, small, and named in the terminal report."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from typing import get_args

import numpy as np
import pytest

from modeldebug.errors import MissingExtraError
from modeldebug.types import SEVERITY_ORDER, Finding, FindingKind, Recommendation, Report, RunInfo

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

from modeldebug.report.html import render_html, write_html  # noqa: E402
from modeldebug.report.plots import FINDING_PLOTS, Canvas, plot_nonfinite  # noqa: E402

XSS = "<img src=x onerror=alert(1)>"  # as in conftest.py

IMG = re.compile(r'<img class="chart" src="data:image/svg\+xml;base64,[A-Za-z0-9+/=]+"')


def _articles(page: str) -> list[str]:
    return re.findall(r"<article.*?</article>", page, flags=re.S)


def test_finding_kinds_in_the_plot_table_exist():
    assert set(FINDING_PLOTS) <= set(get_args(FindingKind))


def test_real_report_findings_sorted_each_next_to_its_plot(dead_report):
    page = render_html(dead_report)
    articles = _articles(page)
    assert len(articles) == len(dead_report.findings) >= 2
    kinds = [re.search(r'data-kind="(\w+)"', a).group(1) for a in articles]
    # each root cause, then what follows from it (Report.stories), the most severe story first
    stories = dead_report.stories()
    assert kinds == [f.kind for story in stories for f in story.findings]
    worst = [min(SEVERITY_ORDER[f.severity] for f in story.findings) for story in stories]
    assert worst == sorted(worst)
    for kind, article in zip(kinds, articles):
        assert IMG.search(article), f"{kind} has no plot next to it"
    assert "dead_relu" in kinds
    for title in ("Loss", "Gradient flow", "Activations", "Update-to-weight ratios", "Memory", "Step time",
                  "Forward time per layer"):
        assert f"<h3>{title}</h3>" in page
    assert "<script" not in page.lower() and "http://" not in page.split("<body>")[1].replace("http://www.w3.org", "")


def test_nan_finding_marks_the_first_bad_step(nan_report):
    (f,) = [f for f in nan_report.findings if f.kind == "nan_or_inf"]
    uri = Canvas().draw(plot_nonfinite, nan_report.metrics, f)
    import base64

    svg = base64.b64decode(uri.split(",", 1)[1]).decode()
    assert f"first non-finite: step {f.step}" in svg


def test_user_text_is_escaped_everywhere():
    evil = XSS
    report = Report(
        run=RunInfo(id="x" + evil, command=["python", "train.py", evil], status="completed", steps=3),
        findings=[Finding(kind="dead_relu", severity="high", confidence=0.9, location=evil, step=1,
                          message=f"Layer {evil} died </textarea><script>alert(2)</script>",
                          evidence={evil: evil, "layers": [evil]},
                          recommendations=[Recommendation(type="fix", description=evil, implementation=f"x = '{evil}'")])],
        metrics={"issue": evil, "series": {"step": [0, 1, 2], "loss": [1.0, 0.9, 0.8]},
                 "layers": [{"name": evil + "$x$", "type": evil, "order": 0, "samples": 2, "step": [0, 1],
                             "dead_frac": [1.0, 1.0], "zero_frac": [1.0, 1.0], "sat_frac": [None, None],
                             "grad_norm": [0.0, 0.0], "fwd_time_s": [1e-4, 1e-4], "output_mean": [0, 0], "output_std": [0, 0],
                             "histogram": {"step": 1, "lo": -0.5, "hi": 0.5, "counts": [0, 4, 0]}}]},
    )
    page = render_html(report)
    assert "<img src=x" not in page and "<script>" not in page
    assert html.escape(evil, quote=False) in page or html.escape(evil) in page
    # the visible text is the string as given
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert f"issue: {evil}" in " ".join(text.split())
    assert len(IMG.findall(page)) >= 2  # the layer's own plot and the overview drew despite the markup in names


def test_missing_extra_names_it(monkeypatch, dead_report, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"modeldebug\[report\]"):
        write_html(dead_report, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_cli_report_writes_html_and_says_where(dead_report, reports_store, tmp_path):
    out = tmp_path / "sub" / "report.html"
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "report", "latest", "--store", reports_store, "--html", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"report written to {out}" in " ".join(proc.stdout.split())
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and IMG.search(page)


def test_cli_html_without_extra_fails_before_running(tmp_path):
    script = tmp_path / "boot.py"  # hide matplotlib from the CLI process, then run it
    script.write_text("import sys; sys.modules['matplotlib'] = None\n"
                      "from modeldebug.cli import main; sys.argv = ['modeldebug'] + sys.argv[1:]; main()\n")
    marker = tmp_path / "ran"
    proc = subprocess.run([sys.executable, str(script), "run", "--store", str(tmp_path / "r.db"), "--html", str(tmp_path / "r.html"),
                           "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "modeldebug[report]" in "".join(proc.stderr.split())
    assert not marker.exists()


def _big_evidence(steps: int = 10_000, layers: int = 100, every: int = 10):
    """A 10,000-step, 100-layer run's evidence (per-layer statistics every 10th step), built directly."""
    from modeldebug.evidence import LAYER_COLUMNS, PARAM_COLUMNS, STEP_COLUMNS, Evidence, LayerInfo, ParamInfo, Table

    rng = np.random.default_rng(0)
    st = {c: np.full(steps, np.nan) for c in STEP_COLUMNS}
    st.update(step=np.arange(steps), loss=np.exp(-np.arange(steps) / 3000) + 0.05 * rng.random(steps))
    for c in ("grad_norm", "lr", "data_s", "forward_s", "backward_s", "optimizer_s", "step_s", "rss_bytes"):
        st[c] = rng.random(steps)
    for c in ("loss_nonfinite", "grad_nonfinite", "input_nonfinite", "sampled", "optimizer_stepped"):
        st[c] = np.zeros(steps, bool)
    sampled = np.arange(0, steps, every)
    n = len(sampled) * layers
    ls = {c: np.full(n, np.nan) for c in LAYER_COLUMNS}
    ls.update(step=np.tile(sampled, layers), layer=np.repeat([f"blocks.{i}.fc" for i in range(layers)], len(sampled)).astype(object))
    for c in ("mean", "std", "zero_frac", "dead_frac", "grad_norm", "fwd_time_s"):
        ls[c] = rng.random(n)
    ls.update(hist_lo=np.full(n, -1.0), hist_hi=np.full(n, 1.0), hist=np.array([np.arange(32, dtype="<i8").tobytes()] * n, dtype=object))
    names = [f"blocks.{i}.fc.{w}" for i in range(layers) for w in ("weight", "bias")]
    ps = {c: np.full(2 * n, np.nan) for c in PARAM_COLUMNS}
    ps.update(step=np.tile(sampled, 2 * layers), param=np.repeat(names, len(sampled)).astype(object))
    for c in ("norm", "grad_norm", "update_ratio"):
        ps[c] = rng.random(2 * n)
    return Evidence(
        run=RunInfo(id="big", status="completed", steps=steps), steps=Table(st), layer_stats=Table(ls), param_stats=Table(ps),
        layers={f"blocks.{i}.fc": LayerInfo(f"blocks.{i}.fc", "Linear", i) for i in range(layers)},
        params={p: ParamInfo(p, p.rsplit(".", 1)[0], [8], 8, True, True) for p in names},
    )


def test_10k_step_100_layer_run_summarises_fast_and_renders_small(tmp_path, cpu_clock):
    from modeldebug.analysis import summarize

    ev = _big_evidence()
    t0 = cpu_clock()
    metrics = summarize(ev)
    assert cpu_clock() - t0 < 0.8
    report = Report(run=ev.run, metrics=metrics)
    write_html(report, tmp_path / "big.html")
    size = (tmp_path / "big.html").stat().st_size
    assert size < 1_500_000, size


def test_onnx_reports_show_op_table_and_comparison_errors(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from modeldebug.onnx import compare_with_torch, profile_execution
    from modeldebug.onnx.compare import export_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 4)).eval()
    example = (torch.randn(2, 8),)
    proto = export_model(net, example, "torchscript")
    prof = render_html(profile_execution(proto, iterations=5, warmup=1))
    assert "ONNX: time per op type" in prof and "<h3>ONNX: time per op</h3>" in prof and IMG.search(prof)
    for t in proto.graph.initializer:  # plant a weight change in the second Linear
        if t.name == "2.weight":
            import onnx

            arr = onnx.numpy_helper.to_array(t).copy()
            arr.flat[0] += 0.5
            t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    report = compare_with_torch(net, example, onnx_model=proto)
    page = render_html(report)
    assert "<h3>ONNX: comparison errors</h3>" in page and 'class="bad"' in page
    articles = _articles(page)
    assert articles and all(IMG.search(a) for a in articles if "onnx_numerical_mismatch" in a)
