"""The collector's rooms: nothing of ours is pickled with a watched model, bounded activations are
found through the MRO, held-back iterations merge as their fields declare, events are typed."""

import copy
import io
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch
from modeldebug.collect.stats import family, saturation_bounds
from modeldebug.collect.steps import Step, merge
from modeldebug.events import Device, MonitorError, RankExit, Ranks, RuntimeErrorDiagnosis
from modeldebug.evidence import Evidence


class MyTanh(nn.Tanh):
    pass


class MyReLU(nn.ReLU):
    pass


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


def _train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
        opt.step()


def test_a_watched_model_saves_and_loads_without_us(store_path):
    """torch.save(model) mid-run (pytorch/examples saves the whole module every epoch): the hooks
    the module holds pickle as standard-library no-ops, and the loaded copy runs unwatched."""
    model = nn.Sequential(nn.Linear(4, 8), MyTanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        _train(model, opt, 2)
        buf = io.BytesIO()
        torch.save(model, buf)
        clone = copy.deepcopy(model)
        _train(model, opt, 2)
    data = buf.getvalue()
    assert b"modeldebug.collect" not in data and b"Debugger" not in data
    loaded = torch.load(io.BytesIO(data), weights_only=False)
    assert loaded(torch.randn(3, 4)).shape == (3, 2)
    assert clone(torch.randn(3, 4)).shape == (3, 2)
    assert pickle.loads(pickle.dumps(loaded))(torch.randn(1, 4)).shape == (1, 2)
    assert dbg.evidence().run.steps == 4  # the copies' calls were not steps of the run


def test_bounded_activations_and_families_through_the_mro(store_path):
    assert saturation_bounds(MyTanh) == saturation_bounds(nn.Tanh) == (-1.0, 1.0)
    assert saturation_bounds(MyReLU) is None and saturation_bounds(nn.Linear) is None
    assert (family(MyTanh), family(MyReLU), family(nn.Linear), family(Block)) == ("Tanh", "ReLU", "Linear", "")

    model = nn.Sequential(nn.Linear(4, 8), MyTanh(), MyReLU(), nn.Linear(8, 4), Block(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.mul_(20)  # drive the tanh into saturation
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        _train(model, opt, 2)
    ev = dbg.evidence()
    assert {n: (i.type, i.family) for n, i in ev.layers.items()} == {
        "0": ("Linear", "Linear"), "1": ("MyTanh", "Tanh"), "2": ("MyReLU", "ReLU"),
        "3": ("Linear", "Linear"), "4.lin": ("Linear", "Linear"), "5": ("Linear", "Linear")}
    sat = ev.layer("1").sat_frac
    assert len(sat) == 2 and (sat > 0.5).all()
    assert np.isnan(ev.layer("2").sat_frac).all()  # a ReLU is not bounded


def test_held_back_iterations_merge_as_their_fields_declare():
    a = Step(index=0, sampled=True, start=1.0, forward_s=0.5, backward_calls=1, data_seen=True,
             loss_sum=torch.tensor(2.0), loss_count=1, layer_vecs={"x": 1})
    b = Step(index=1, sampled=False, start=2.0, forward_s=0.25, backward_calls=1, loss_sum=torch.tensor(4.0),
             loss_count=1, layer_vecs={"y": 2})
    step = Step(index=2, sampled=False, start=3.0, backward_calls=1, optimizer_s=0.1)
    merge(step, [a, b])
    assert (step.forward_s, step.backward_calls, step.loss_count, float(step.loss_sum)) == (0.75, 3, 2, 6.0)
    assert step.data_seen and step.sampled and step.start == 1.0
    assert step.layer_vecs == {"x": 1}  # the first held iteration's statistics stand for the step
    assert step.optimizer_s == 0.1  # not merged


def test_events_are_typed_and_the_stored_form_is_unchanged():
    rows = [
        {"step": None, "type": "device", "data": {"type": "cuda", "name": "H200", "total_memory": 5}},
        {"step": 2, "type": "made_up_by_a_newer_version", "data": {"x": 1}},
        {"step": 3, "type": "monitor_error", "data": {"hook": "_root_pre", "type": "E", "message": "m", "new": 1}},
        {"step": 4, "type": "runtime_error", "data": '{"kind": "runtime_error"}'},  # JSON text
    ]
    ev = Evidence.build(events=rows)
    (dev,) = ev.events_of(Device)
    assert (dev.name, dev.total_memory, dev.at_step) == ("H200", 5, None)
    (err,) = ev.events_of(MonitorError)
    assert (err.hook, err.message, err.at_step) == ("_root_pre", "m", 3)
    assert ev.events_of(RuntimeErrorDiagnosis)[0].finding == {"kind": "runtime_error"}
    assert len(ev.events) == 4  # the unknown type is kept
    rec = MonitorError(hook="h", type="E", message="m").record(7)
    assert (rec.step, rec.type, rec.data) == (7, "monitor_error", {"hook": "h", "type": "E", "message": "m"})
    assert "error_type" not in RankExit(rank=1, status="completed").to_data()  # written only when known


def test_the_rank_that_failed_first():
    ranks = [{"rank": 0, "status": "crashed", "error_type": "DistBackendError", "comm_error": True, "time": 5.0},
             {"rank": 1, "status": "crashed", "error_type": "ValueError", "comm_error": False, "time": 7.0},
             {"rank": 2, "status": "interrupted", "killed_by_signal": 15, "time": 6.0}]
    assert Ranks(ranks=ranks).first_failed()["rank"] == 1
    assert Ranks(ranks=[{"rank": 0, "status": "completed"}]).first_failed() is None
