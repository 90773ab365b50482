"""Findings while training runs: the alerts file, --stop-on, md.watch(on_finding=..., stop_on=...),
and the final report unchanged by the live diagnosis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.live_diagnosis import LiveDiagnosis, StopTraining, parse_stop_on
from modeldebug.store import RunStore

# A regression that trains well for a while, then diverges when a later phase raises the
# learning rate far too high. It reports the step it got to, also when interrupted, and (given
# SEEN_FILE) the first step at which that file had a line in it.
DIVERGES = '''
import os, sys, time
import torch
from torch import nn

class Pause(nn.Module):
    """Stands for a model whose step takes about 10 ms."""

    def forward(self, x):
        time.sleep(0.01)
        return x


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), Pause(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
X = torch.randn(512, 8)
y = X.sum(1, keepdim=True)
watch_file = os.environ.get("SEEN_FILE")
step = 0
try:
    for step in range(int(os.environ.get("STEPS", "3000"))):
        if step == int(os.environ.get("PHASE2", "40")):
            for group in opt.param_groups:
                group["lr"] = 1e6
        idx = torch.randint(0, 512, (32,))
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        if watch_file and os.path.exists(watch_file) and os.path.getsize(watch_file):
            print(f"alert seen at step {step}", flush=True)
            break
finally:
    print(f"ended at step {step}", flush=True)
'''


class Pause(nn.Module):
    """Stands for a model whose step takes about 10 ms."""

    def forward(self, x):
        time.sleep(0.01)
        return x


def run(tmp_path: Path, *options: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    script = tmp_path / "train.py"
    script.write_text(DIVERGES)
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", str(tmp_path / "runs.db"), *options,
                           "--json", str(out), "--", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return proc, json.loads(out.read_text())


def ended_at(proc) -> int:
    return int(proc.stdout.strip().splitlines()[-1].split()[-1])


def test_alerts_are_json_lines_written_while_the_script_runs(tmp_path):
    alerts = tmp_path / "alerts.jsonl"
    proc, report = run(tmp_path, "--alerts", str(alerts), env={"SEEN_FILE": str(alerts)})
    assert proc.returncode == 0, proc.stderr
    assert "alert seen at step" in proc.stdout  # the script read the file before it ended: flushed as it came
    lines = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert lines and all(line["event"] in ("new", "changed") and line["run"] == report["run"]["id"] for line in lines)
    first = lines[0]["finding"]
    assert first["severity"] in ("high", "medium") and first["kind"] in ("nan_or_inf", "exploding_gradient",
                                                                          "loss_not_decreasing", "oscillating_loss")
    keys = [(line["finding"]["kind"], line["finding"]["location"], line["finding"]["severity"]) for line in lines]
    assert len(keys) == len(set(keys))  # once when it first holds, again only when it changes
    # every serious finding of the final report was alerted, at the end at the latest
    alerted = {(k, loc) for k, loc, _ in keys}
    assert {(f["kind"], f["location"]) for f in report["findings"] if f["severity"] != "low"} <= alerted


def test_stop_on_high_stops_a_diverging_run_soon_after_it_breaks(tmp_path):
    proc, report = run(tmp_path, "--stop-on", "high")
    assert proc.returncode != 0
    stopped = ended_at(proc)
    assert 40 < stopped < 600, proc.stdout  # of 3000 steps: stopped within seconds of the divergence at step 40
    assert report["run"]["status"] == "stopped"
    assert report["run"]["stopped_by"].startswith("high ")
    assert f"stopped by {report['run']['stopped_by']}" in " ".join(proc.stderr.split())
    with RunStore(tmp_path / "runs.db", read_only=True) as store:
        assert store.list_runs(limit=1)[0].status == "stopped"


def test_stop_on_never_stops_a_healthy_run_nor_one_with_other_kinds(tmp_path):
    proc, report = run(tmp_path, "--stop-on", "high", env={"PHASE2": "100000", "STEPS": "150"})
    assert proc.returncode == 0, proc.stderr
    assert ended_at(proc) == 149 and report["run"]["status"] == "completed"
    proc, report = run(tmp_path, "--stop-on", "memory_growth,input_bottleneck", env={"STEPS": "200"})
    assert ended_at(proc) == 199 and report["run"]["status"] == "completed"


def test_the_final_report_is_the_post_run_diagnosis_of_the_same_evidence(tmp_path):
    # (--every: the same steps sampled in both runs; the adaptive schedule follows the machine's load)
    proc, live = run(tmp_path, "--every", "5", "--alerts", str(tmp_path / "a.jsonl"), env={"STEPS": "120"})
    again = subprocess.run([sys.executable, "-m", "modeldebug", "report", live["run"]["id"], "--store",
                            str(tmp_path / "runs.db"), "--reanalyze", "--json", "-"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert json.loads(again.stdout)["findings"] == live["findings"]
    proc, plain = run(tmp_path, "--every", "5", env={"STEPS": "120"})  # without live diagnosis: the same findings
    strip = lambda r: [(f["kind"], f["severity"], f["location"], f["step"]) for f in r["findings"]]  # noqa: E731
    assert strip(plain) == strip(live)


def test_stop_on_is_checked_before_the_script_starts(tmp_path):
    (tmp_path / "train.py").write_text("raise SystemExit('must not run')\n")
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", str(tmp_path / "r.db"), "--stop-on",
                           "nan", "--", sys.executable, "train.py"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "--stop-on takes high, medium" in proc.stderr and "must not run" not in proc.stderr
    assert parse_stop_on("nan_or_inf,custom.ours").kinds == {"nan_or_inf", "custom.ours"}


def test_watch_gives_findings_as_they_come_and_stops_at_the_next_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), Pause(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    X, seen = torch.randn(512, 8), []
    y = X.sum(1, keepdim=True)
    training = threading.current_thread()
    calls = lambda event, f: seen.append((event, f.kind, threading.current_thread() is training))  # noqa: E731
    step = 0
    with pytest.raises(StopTraining) as stop:
        with md.watch(model, opt, store=str(tmp_path / "runs.db"), on_finding=calls, stop_on="high") as dbg:
            for step in range(3000):
                if step == 40:
                    opt.param_groups[0]["lr"] = 1e6
                idx = torch.randint(0, 512, (32,))
                opt.zero_grad()
                nn.functional.mse_loss(model(X[idx]), y[idx]).backward()
                opt.step()
    assert 40 < step < 600
    assert stop.value.finding.severity == "high" and stop.value.finding.kind in str(stop.value)
    assert seen and all(not on_training_thread for _, _, on_training_thread in seen)  # called from the live thread
    with RunStore(tmp_path / "runs.db", read_only=True) as store:
        info = store.list_runs(limit=1)[0]
    assert info.status == "stopped" and info.stopped_by.startswith("high ")
    assert info.steps in (step, step + 1)  # the step that raised is closed without its update
    assert dbg.findings and any(f.severity == "high" for f in dbg.findings)


def test_a_live_diagnosis_needs_a_store_file():
    with pytest.raises(ValueError, match="store file"):
        md.watch(nn.Linear(2, 2), config=md.DebuggingConfig(store_path=None), on_finding=print)


def test_a_pass_before_the_run_exists_finds_nothing(tmp_path):
    live = LiveDiagnosis("no-such-run", tmp_path / "missing.db")
    assert live.poll() == [] and live.passes == 0


def finding(kind: str, severity: str = "medium", location: str | None = "fc") -> md.Finding:
    return md.Finding(kind=kind, severity=severity, confidence=0.8, location=location, message=kind)


def test_a_finding_alerts_once_a_later_pass_with_more_steps_bears_it_out(tmp_path):
    # A pass judges an unfinished run (a trend in its first steps, a burst of load, an optimizer
    # found later): a finding must hold until a pass has seen 1.5x the steps; a NaN alerts at once.
    live = LiveDiagnosis("r", tmp_path / "runs.db")

    def look(steps, *found):
        live.steps_seen = steps
        return [(e, f.kind, f.severity) for e, f in live._raise(list(found))]

    slow, nan = finding("slow_operation"), finding("nan_or_inf", "high")
    assert look(20, slow, nan) == [("new", "nan_or_inf", "high")]
    assert look(40, nan) == []  # it did not hold: forgotten
    assert look(60, slow) == []
    assert look(80, slow) == []  # held, but 80 < 1.5 x 60 steps
    assert look(90, slow) == [("new", "slow_operation", "medium")]
    high = finding("slow_operation", "high")
    assert look(100, high) == [] and look(150, high) == [("changed", "slow_operation", "high")]
    assert look(150, high) == []  # alerted once
    # the diagnosis at the end has seen the whole run: it needs no second pass
    end = LiveDiagnosis("r", tmp_path / "runs.db")
    end.finish([finding("input_bottleneck", location=None)])
    assert end.newest is not None and end.newest.kind == "input_bottleneck"


def test_the_live_budget_comes_from_the_option_or_the_project_file(tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text("raise SystemExit('must not run')\n")
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", str(tmp_path / "r.db"),
                           "--live-budget", "0.9", "--", sys.executable, "train.py"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "--live-budget" in proc.stderr and "must not run" not in proc.stderr
    (tmp_path / "modeldebug.toml").write_text("live-budget = 0.05\n")
    monkeypatch.chdir(tmp_path)
    model = nn.Linear(2, 1)
    with md.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), on_finding=lambda e, f: None) as dbg:
        assert dbg.live.budget == 0.05
    (tmp_path / "modeldebug.toml").write_text("live-budget = 0.9\n")
    with pytest.raises(md.ConfigError, match="live-budget"):
        md.watch(model)


def test_the_run_store_has_the_models_and_optimizers_while_the_run_goes_on(tmp_path):
    # Rules read the optimizers and parameters (a GAN's two players, lr advice): a live pass
    # must not judge a run without them. A second optimizer found later is written when found.
    torch.manual_seed(0)
    gen, disc = nn.Linear(4, 4), nn.Linear(4, 1)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.01)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
    store = tmp_path / "runs.db"

    def seen(run_id):
        with RunStore(store, read_only=True) as s:
            ev = s.load_evidence(run_id)
        return sorted(o.type for o in ev.optimizers), sorted({p.model for p in ev.params.values() if p.in_optimizer})

    with md.watch([disc, gen], opt_d, store=str(store)) as dbg:
        for step in range(30):
            if step == 5:
                dbg.store.flush()
                assert seen(dbg.run_id)[0] == ["SGD"]
            opt_d.zero_grad()
            disc(gen(torch.randn(8, 4)).detach()).mean().backward()
            opt_d.step()
            if step >= 10:  # the second optimizer steps from step 10 on: adopted then
                opt_g.zero_grad()
                (-disc(gen(torch.randn(8, 4))).mean()).backward()
                opt_g.step()
            if step == 25:
                dbg.store.flush()
                assert seen(dbg.run_id) == (["SGD", "SGD"], ["Linear", "Linear2"])


def test_an_acute_only_pass_alerts_a_nan_and_leaves_the_other_findings_to_the_whole_pass(tmp_path):
    from modeldebug.live_diagnosis import ACUTE_KINDS, _acute_rules

    kinds = {cls.kind for cls in _acute_rules()}
    assert "nan_or_inf" in kinds and kinds <= ACUTE_KINDS
    live = LiveDiagnosis("r", tmp_path / "runs.db")
    live.steps_seen = 20
    slow, nan = finding("slow_operation"), finding("nan_or_inf", "high")
    assert live._raise([slow]) == []
    live.steps_seen = 30
    assert [f.kind for _, f in live._raise([nan], partial=True)] == ["nan_or_inf"]
    live.steps_seen = 30
    assert [f.kind for _, f in live._raise([slow, nan])] == ["slow_operation"]  # held since 20: 30 >= 1.5 x 20
