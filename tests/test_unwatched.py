"""A run that holds no training step says that no training was seen, and why (the processes its
script started), in the terminal, JSON and HTML reports; DataLoader workers are not mistaken for it."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeldebug as md
from modeldebug.collect.auto import AutoDebugger
from modeldebug.events import ProcessActivity
from modeldebug.report.terminal import print_report
from modeldebug.types import Report


def _auto(tmp_path) -> AutoDebugger:
    gc.collect()  # optimizers of earlier tests must not bring their models in
    return AutoDebugger(md.DebuggingConfig(every=1, store_path=str(tmp_path / "runs.db"))).start()


def _shown(report: Report) -> str:
    console = Console(record=True, width=200)
    print_report(report, console)
    return " ".join(console.export_text().split())


def _idle():
    pass


def test_processes_started_instead_of_training_are_named(tmp_path):
    dbg = _auto(tmp_path)
    try:
        for _ in range(2):
            p = multiprocessing.get_context("fork").Process(target=_idle)
            p.start()
            p.join()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        os.system("true")
        x = torch.randn(4, 3) @ torch.randn(3, 2)  # torch used, nothing trained
    finally:
        dbg.stop()
    (activity,) = dbg.evidence().events_of(ProcessActivity)
    assert activity.children_total == 4 and activity.unwatched_backward_calls == 0
    report = dbg.report()
    unwatched = report.run.unwatched
    assert unwatched is not None and report.run.steps == 0
    kinds = {(c["kind"], c["target"]): c["count"] for c in unwatched.child_processes}
    assert kinds == {("multiprocessing", f"{__name__}._idle"): 2, ("subprocess", f"{sys.executable} -c pass"): 1,
                     ("system", "true"): 1}
    assert unwatched.reason.startswith("No training was seen: no backward() was seen in the watched process.")
    assert "4 child processes (2 multiprocessing workers running" in unwatched.reason
    shown = _shown(report)
    assert "No training was seen" in shown and "No problems found" not in shown
    again = Report.model_validate_json(report.to_json())  # the contract carries it
    assert again.run.unwatched == unwatched


def test_a_run_that_trains_with_loader_workers_is_not_unwatched(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(torch.randn(64, 8), torch.randn(64, 1)), batch_size=16, num_workers=1)
    dbg = _auto(tmp_path)
    try:
        for x, y in loader:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    finally:
        dbg.stop()
    (activity,) = dbg.evidence().events_of(ProcessActivity)
    assert activity.loader_workers == 1 and activity.children_total == 0 and not activity.children
    report = dbg.report()
    assert report.run.steps == 4 and report.run.unwatched is None
    assert "unwatched" not in report.to_json()  # written only when set
    assert "No training was seen" not in _shown(report)


def test_unwatched_backward_calls_and_a_crash_before_any(tmp_path):
    dbg = _auto(tmp_path)
    w = torch.randn(3, requires_grad=True)  # no module: nothing to watch
    (w * 2).sum().backward()
    dbg.stop()
    reason = dbg.report().run.unwatched.reason
    assert "1 backward() call(s) were seen in the watched process" in reason

    dbg = _auto(tmp_path)
    try:
        nn.Linear(8, 2)(torch.randn(4, 9))  # crashes in the first forward, before any backward
    except RuntimeError as exc:
        dbg.stop("crashed", error=exc)
    report = dbg.report()
    assert report.run.unwatched.reason == "No training was seen: no backward() was seen in the watched process."
    shown = _shown(report)
    assert "runtime_error" in shown and report.run.unwatched.reason in shown  # under the crash's finding


def _rank_worker(rank):
    pass


def test_torch_multiprocessing_spawn_names_the_users_function(tmp_path):
    import torch.multiprocessing as tmp

    dbg = _auto(tmp_path)
    try:
        tmp.spawn(_rank_worker, nprocs=1, start_method="fork")
    finally:
        dbg.stop()
    (activity,) = dbg.evidence().events_of(ProcessActivity)
    assert activity.children == [{"kind": "multiprocessing", "target": f"{__name__}._rank_worker", "count": 1}]


def test_an_odd_stored_activity_does_not_cost_the_report(tmp_path):
    dbg = _auto(tmp_path)
    dbg.stop()
    dbg.store.add(dbg.run_id, ProcessActivity(children=["not a dict"], children_total=1).record(step=None))
    dbg.store.flush()  # the last activity, as a damaged store could hold it
    report = dbg.report()
    assert report.run.steps == 0 and report.run.unwatched is None  # the report is still made
