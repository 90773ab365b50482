"""The always-on path: what our hooks do on an unsampled step does not grow with the model.

Counted, not timed: every Python and C call made while a frame of modeldebug's own code is on the
stack (``sys.setprofile``), and every bytecode executed in modeldebug's own frames (``sys.settrace``
with opcode events: a per-parameter loop shows there even when it makes no call), over steady
unsampled steps of a 3-module and a 30-module model.
"""

from __future__ import annotations

import collections
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
