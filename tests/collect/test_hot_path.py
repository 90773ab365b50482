"""The always-on path: what our hooks do on an unsampled step does not grow with the model.

Counted, not timed: every Python and C call made while a frame of modeldebug's own code is on the
stack (``sys.setprofile``), and every bytecode executed in modeldebug's own frames (``sys.settrace``
with opcode events: a per-parameter loop shows there even when it makes no call), over steady
unsampled steps of a 3-module and a 30-module model.
"""

from __future__ import annotations

import collections
import math
import sys
from pathlib import Path

import torch
from torch import nn

import modeldebug as md
from modeldebug.store import RunStore

SRC = str(Path(md.__file__).parent)


def _stack(modules: int) -> nn.Sequential:
    """Linear, ReLU, Linear, ... : ``modules`` of them."""
    return nn.Sequential(*(nn.Linear(8, 8) if i % 2 == 0 else nn.ReLU() for i in range(modules)))


def _ours(frame) -> bool:
    return frame.f_code.co_filename.startswith(SRC)


def _call_counter(counts: collections.Counter):
    def profile(frame, event, arg):
        if event not in ("call", "c_call"):
            return
        f = frame
        while f is not None and not _ours(f):
            f = f.f_back
        if f is None:
            return  # the user's own work, no frame of ours under it
        where = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
        counts[(where, getattr(arg, "__qualname__", "") if event == "c_call" else "")] += 1

    return profile


def _bytecode_counter(counts: collections.Counter):
    def trace(frame, event, arg):
        if not _ours(frame):
            return None
        if event == "call":
            frame.f_trace_opcodes, frame.f_trace_lines = True, False
        elif event == "opcode":
            counts[f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"] += 1
        return trace

    return trace


def _per_step(model: nn.Module, tmp_path, how: str, steps: int = 10) -> collections.Counter:
    torch.manual_seed(0)
    x, y = torch.randn(4, 8), torch.randint(0, 8, (4,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    cfg = md.DebuggingConfig(every=10**9, warmup_steps=0)
    # No timed write inside the counted steps, however slow the machine (rows are written at stop).
    store = RunStore(tmp_path / f"{how}-{len(list(model))}.db", flush_interval_s=1e9, flush_rows=10**6)
    counts: collections.Counter = collections.Counter()
    with md.watch(model, opt, config=cfg, store=store) as dbg:
        for _ in range(300):  # past the schedule's warm-up, the first 100 steps' fingerprints, the first 256's memory
            step()
        sampled = dbg.monitor_overhead().sampled_steps
        if how == "calls":
            sys.setprofile(_call_counter(counts))
        else:
            sys.settrace(_bytecode_counter(counts))
        try:
            for _ in range(steps):
                step()
        finally:
            sys.setprofile(None)
            sys.settrace(None)
        assert dbg.monitor_overhead().sampled_steps == sampled  # every counted step was unsampled
    return counts


def _grown(few: collections.Counter, many: collections.Counter) -> dict:
    return {k: (few.get(k, 0), many[k]) for k in many if many[k] > few.get(k, 0)}


def test_calls_on_an_unsampled_step_do_not_depend_on_the_number_of_modules(tmp_path):
    few, many = _per_step(_stack(3), tmp_path, "calls"), _per_step(_stack(30), tmp_path, "calls")
    grown = _grown(few, many)
    assert not grown, f"calls that grow with the model (3 modules, 30 modules): {grown}"
    assert sum(many.values()) == sum(few.values())


def test_bytecodes_of_an_unsampled_step_do_not_depend_on_the_number_of_modules(tmp_path):
    few, many = _per_step(_stack(3), tmp_path, "ops"), _per_step(_stack(30), tmp_path, "ops")
    grown = _grown(few, many)
    assert not grown, f"our functions whose bytecodes grow with the model (3 modules, 30 modules): {grown}"
    assert sum(many.values()) == sum(few.values())
    assert sum(few.values()) > 0  # (the counter sees our frames)


def _steps_table(tmp_path, name: str, monkeypatch, at_once: bool) -> dict:
    """A short run with every per-step field in use (a scheduler, clipping, dropout, a non-finite
    loss at the end, sampled steps between unsampled ones); its step table."""
    import numpy as np

    from modeldebug.collect.transfer import HostQueue
    from modeldebug.evidence import STEP_COLUMNS

    with monkeypatch.context() as patched:
        if not at_once:  # every step through a StepRecord and the queue, as sampled and CUDA steps go
            patched.setattr(HostQueue, "writes_at_once", lambda self, st: False)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
        store = RunStore(tmp_path / f"{name}.db")
        with md.watch(model, opt, config=md.DebuggingConfig(every=5, warmup_steps=2), store=store) as dbg:
            for i in range(40):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[i % 4 * 16:][:16]), y[i % 4 * 16:][:16])
                (loss * (math.inf if i == 36 else 1.0)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
            recent = dbg.metrics
        steps = store.load_evidence(dbg.run_id).steps
        store.close()
    timed = {"data_s", "forward_s", "backward_s", "optimizer_s", "step_s", "rss_bytes"}
    table = {k: (np.isnan(steps[k]) if k in timed else steps[k]).tolist() for k in STEP_COLUMNS}
    table["metrics"] = (recent.steps, recent.loss, recent.grad_norm)
    return table


def test_a_step_written_at_once_as_a_row_is_the_record_the_queue_writes(tmp_path, monkeypatch):
    rows = _steps_table(tmp_path, "rows", monkeypatch, at_once=True)
    records = _steps_table(tmp_path, "records", monkeypatch, at_once=False)
    assert len(rows["step"]) == 40 and any(rows["loss_nonfinite"]) and any(rows["sampled"])
    # Each field in its column (the row is positional): what the loop did, step by step.
    assert rows["step"] == list(range(40))
    assert rows["clip_calls"] == [1] * 40 and rows["clips_before_backward"] == [0] * 40
    assert rows["scheduler_steps"] == [0] + [1] * 39  # (a call counts at the next step's close)
    assert rows["lr"][:7] == [0.1] * 7 and rows["lr"][7] == 0.05
    assert rows["forward_calls"] == rows["backward_calls"] == rows["loss_calls"] == [1] * 40
    assert all(rows["optimizer_stepped"]) and not any(rows["eval_mode"]) and not any(rows["scaler_skipped"])
    assert rows["loss_nonfinite"].index(True) == 36 and not any(rows["forward_s"] + rows["step_s"])
    assert rows.keys() == records.keys()
    for column in rows:
        assert str(rows[column]) == str(records[column]), column  # (str: NaN equals NaN)


def test_an_unsampled_step_makes_no_step_record(tmp_path, monkeypatch):
    from modeldebug.collect import steps as steps_module

    made = []
    real = steps_module.StepRecord

    def counted(*args):
        made.append(args)
        return real(*args)

    monkeypatch.setattr(steps_module, "StepRecord", counted)
    torch.manual_seed(0)
    model = _stack(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    store = RunStore(tmp_path / "r.db")
    with md.watch(model, opt, config=md.DebuggingConfig(every=10, warmup_steps=0), store=store) as dbg:
        for _ in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.randint(0, 8, (4,))).backward()
            opt.step()
        assert dbg.monitor_overhead().sampled_steps == 3
    assert len(made) == 3  # the sampled steps' records only
    assert len(store.load_evidence(dbg.run_id).steps["step"]) == 30
    store.close()
