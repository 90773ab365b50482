"""torch.compile under the monitor: the compiled graph is left as the plain compiled run has it (no
graph break, no recompilation, counted with dynamo's counters), per-parameter statistics on every
sampled step and per-layer ones from the sampled steps, which run eagerly; zero-code runs of
compiled models work (dead weak proxies in the process, torch.save of the model)."""

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import modeldebug as md
from modeldebug.collect import auto
from modeldebug.events import MonitorError
from modeldebug.store import RunStore

STEPS, EVERY = 12, 4  # sampled steps 0, 4, 8 (and the warm-up's), unsampled ones between


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 24)
        self.hidden = nn.Linear(24, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(torch.relu(self.hidden(torch.tanh(self.embed(x)))))


class Counted:
    """A dynamo backend that counts the calls of the graphs it compiled: the compiled code in use."""

    def __init__(self, backend: str):
        self.inner, self.calls, self.compiles = torch._dynamo.lookup_backend(backend), 0, 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1  # one per graph of this model (a graph break makes two), whatever else the process compiles
        compiled = self.inner(gm, example_inputs)

        def run(*args):
            self.calls += 1
            return compiled(*args)

        return run


def _compiled(style: str, backend):
    torch.manual_seed(0)
    model = Net()
    if style == "in_place":
        model.compile(backend=backend)
        return model, model
    return model, torch.compile(model, backend=backend)


def _train(model, run, opt, steps=STEPS):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        opt.zero_grad()
        loss = F.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
    return float(loss)


def _dynamo_counts(counted: Counted) -> dict:
    # Counted by this model's own backend: dynamo's frame counters are process-wide, and a frame
    # another test of the same worker left compiling once made them differ by one.
    return {"graphs": counted.compiles, "graph_breaks": sum(counters["graph_break"].values())}


def _plain_counts(style, backend):
    torch._dynamo.reset()
    counters.clear()
    counted = Counted(backend)
    model, run = _compiled(style, counted)
    loss = _train(model, run, torch.optim.SGD(model.parameters(), lr=0.05))
    assert counted.calls == STEPS
    return _dynamo_counts(counted), loss


@pytest.mark.parametrize("style", ["wrapper", "in_place"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_watched_compiled_run_compiles_as_the_plain_one(style, backend, store_path):
    plain, plain_loss = _plain_counts(style, backend)
    assert plain["graphs"] >= 1 and plain["graph_breaks"] == 0

    torch._dynamo.reset()
    counters.clear()
    counted = Counted(backend)
    model, run = _compiled(style, counted)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    config = md.DebuggingConfig(every=EVERY, warmup_steps=0, store_path=store_path)
    with torch._dynamo.config.patch(error_on_recompile=True), md.watch(run, opt, config=config) as dbg:
        loss = _train(model, run, opt)  # (a recompile would raise here)
    assert _dynamo_counts(counted) == plain
    assert loss == pytest.approx(plain_loss, rel=1e-5)  # eager sampled steps train as compiled ones do
    assert not dbg.guard.broken

    ev = dbg.evidence()
    sampled = set(ev.steps.step[ev.steps.sampled].tolist())
    assert len(ev.steps) == STEPS and {0, 4, 8} <= sampled and len(sampled) < STEPS
    assert counted.calls == STEPS - len(sampled)  # the compiled graph ran every unsampled step
    assert np.isfinite(ev.steps.loss).all() and np.isfinite(ev.steps.grad_norm).all()
    assert (ev.steps.forward_s > 0).all()  # timed around the compiled call (in place too), outside its graph
    assert {"embed", "hidden", "head"} <= set(ev.layers)  # the layers of the module behind the compiled one
    assert set(ev.layer_stats.step.tolist()) == sampled
    for layer in ("embed", "hidden", "head"):  # outputs and their gradients, on each sampled step
        stats = ev.layer(layer)
        assert set(stats.step.tolist()) == sampled
        assert np.isfinite(stats.std).all() and np.isfinite(stats.grad_norm).all()
    for name in ("embed.weight", "hidden.weight", "head.bias"):
        param = ev.param(name)
        assert param.changed.all() and np.isfinite(param.update_ratio).all()
    # Nothing of ours is left on the user's modules, compiled or not.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    if style == "in_place":  # its compiled call is its own again
        assert "CompiledCall" not in model._compiled_call_impl.__qualname__
    assert torch.compiler.is_compiling() is False  # and the compiler's stance is back to default
    assert torch._dynamo.eval_frame._stance.stance == "default"


def test_a_dead_weak_proxy_in_the_process_does_not_stop_discovery():
    class Thing:
        pass

    thing = Thing()
    holder = [weakref.proxy(thing)]  # a list holds the proxy: the gc scan meets it
    del thing
    gc.collect()
    with pytest.raises(ReferenceError):
        isinstance(holder[0], nn.Module)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    modules, optimizers = auto._live()
    assert any(m is model for m in modules) and any(o is opt for o in optimizers)


SCRIPT = """
import json, os, sys, torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

torch._dynamo.config.error_on_recompile = True
style, out = sys.argv[1], sys.argv[2]
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(6, 24), nn.Linear(24, 3)
    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)))
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3)) if style == "wrapper" else Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
if style == "in_place":
    model.compile(backend="eager")
    run = model
else:
    run = torch.compile(model, backend="eager")
gen = torch.Generator().manual_seed(1)
for step in range(30):
    x = torch.randn(16, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt.zero_grad()
    F.cross_entropy(run(x), y).backward()
    opt.step()
torch.save(model, out + ".pt")  # the whole module, as pytorch/examples do
if len(sys.argv) > 3:  # another run's saved model loads here, where modeldebug was never imported
    torch.load(sys.argv[3], weights_only=False)
    assert "modeldebug" not in sys.modules
json.dump({"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
           "frames": counters["frames"]["total"]}, open(out, "w"))
"""


# A Sequential wrapped by torch.compile (its graph is traced from the wrapper) and a module of the
# script's own compiled in place (the discovery hooks are traced into its call).
@pytest.mark.parametrize("style", ["wrapper", "in_place"])
def test_zero_code_run_of_a_compiled_model(style, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--every", "5", "--",
         sys.executable, str(script), style, str(tmp_path / "watched.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "global hooks" not in proc.stderr  # torch's warning about our discovery hooks is not shown
    plain = subprocess.run([sys.executable, str(script), style, str(tmp_path / "plain.json"), str(tmp_path / "watched.json.pt")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert plain.returncode == 0, plain.stderr  # (and torch.save(model) pickled nothing of ours)
    watched = json.loads((tmp_path / "watched.json").read_text())
    expected = json.loads((tmp_path / "plain.json").read_text())
    assert watched["graphs"] == expected["graphs"] >= 1 and watched["graph_breaks"] == expected["graph_breaks"] == 0

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["status"] == "completed" and report["run"]["steps"] == 30
    with RunStore(Path(tmp_path) / ".modeldebug" / "runs.db") as store:
        ev = store.load_evidence(report["run"]["id"])
    assert not ev.events_of(MonitorError)  # the monitor stayed on
    assert np.isfinite(ev.steps.grad_norm).all() and len(ev.layer_stats) > 0
    assert set(ev.layer_stats.step.tolist()) <= set(ev.steps.step[ev.steps.sampled].tolist())
    first = "0.weight" if style == "wrapper" else "embed.weight"
    assert ev.param(first).changed.all()


class LogOutput(Net):
    def forward(self, x):
        return torch.log(torch.relu(super().forward(x)))  # log of 0 where a score is negative: -inf


@pytest.mark.parametrize("style", ["wrapper", "in_place"])
def test_a_nonfinite_step_of_a_compiled_model_is_replayed_to_its_op(style, store_path):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LogOutput()
    run = model if style == "in_place" else torch.compile(model, backend="eager")
    if style == "in_place":
        model.compile(backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with torch._dynamo.config.patch(error_on_recompile=True), \
            md.watch(run, opt, config=md.DebuggingConfig(every=100, store_path=store_path)) as dbg:
        _train(model, run, opt, steps=3)  # (the replay runs eagerly: no recompile)
    from modeldebug.events import NonfiniteOrigin

    ev = dbg.evidence()
    assert ev.steps.loss_nonfinite.all()
    origins = ev.events_of(NonfiniteOrigin)
    assert origins and origins[0].phase == "forward" and "log" in (origins[0].op or "")
    assert not (origins[0].module or "").startswith("_orig_mod")  # named as the watched model names it


def test_an_internal_error_on_a_sampled_step_gives_the_compiled_graph_back(store_path, monkeypatch):
    torch._dynamo.reset()
    model, run = _compiled("wrapper", "eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    config = md.DebuggingConfig(every=1, store_path=store_path)
    with md.watch(run, opt, config=config) as dbg:
        def broken(*args, **kwargs):
            raise RuntimeError("a bug of ours")

        monkeypatch.setattr(dbg.hooks, "_input_stats", broken)  # raises inside the root pre-hook, window open
        _train(model, run, opt, steps=2)
        assert dbg.guard.broken
        assert torch._dynamo.eval_frame._stance.stance == "default"  # the rest of the run is compiled


def test_a_part_compiled_on_its_own_gets_its_layer_statistics(store_path):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Net()
    model.hidden = torch.compile(model.hidden, backend="eager")  # only one block compiled
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    config = md.DebuggingConfig(every=EVERY, warmup_steps=0, store_path=store_path)
    with torch._dynamo.config.patch(error_on_recompile=True), md.watch(model, opt, config=config) as dbg:
        _train(model, model, opt)
    assert sum(counters["graph_break"].values()) == 0 and counters["stats"]["unique_graphs"] == 1
    ev = dbg.evidence()
    sampled = set(ev.steps.step[ev.steps.sampled].tolist())
    inside = [name for name in ev.layers if name.startswith("hidden.")]  # the compiled block's own layer
    assert inside and set(ev.layer(inside[0]).step.tolist()) == sampled
