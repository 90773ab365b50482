"""optimizer.step(closure): forward and backward run inside the step (LBFGS, Lightning). The step's
gradient norm is the one its own backward made, the NaN replay runs before the weights change, and
the optimizer's time leaves out the closure's forward and backward."""

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def _norm(model):
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


def test_gradient_norms_and_losses_belong_to_their_own_step(store_path):
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    norms, losses = [], []

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        norms.append(_norm(model))
        losses.append(loss.item())
        return loss

    with watch(model, opt, config=md.DebuggingConfig(every=3, store_path=store_path)) as dbg:
        for _ in range(8):
            opt.step(closure)
    steps = dbg.evidence().steps
    assert len(steps) == 8
    np.testing.assert_allclose(steps.grad_norm, norms, rtol=1e-4)  # not shifted by one step
    np.testing.assert_allclose(steps.loss, losses, rtol=1e-5)
    assert steps.optimizer_stepped.all() and (steps.backward_calls == 1).all()


def test_lbfgs_steps_keep_the_first_evaluation(store_path):
    model, (x, y) = _model(1), _data(1)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    firsts, calls = [], []

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        calls.append((loss.item(), _norm(model)))
        return loss

    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for _ in range(4):
            before = len(calls)
            opt.step(closure)
            firsts.append(calls[before])
    steps = dbg.evidence().steps
    assert len(calls) > 8, "LBFGS evaluated the closure several times per step"
    assert len(steps) == 4
    np.testing.assert_allclose(steps.loss, [c[0] for c in firsts], rtol=1e-5)
    np.testing.assert_allclose(steps.grad_norm, [c[1] for c in firsts], rtol=1e-4)
    assert np.isfinite(dbg.evidence().param("0.weight").update_ratio).any()


class _Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def test_the_nan_replay_runs_inside_the_closure(store_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), _Log(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _data()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x).clamp(-1e4, 1e4), y)
        loss.backward()
        return loss

    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for _ in range(3):
            opt.step(closure)
    origins = [e["data"] for e in dbg.evidence().events if e["type"] == "nonfinite_origin"]
    assert origins, "no replay happened"
    assert (origins[0]["step"], origins[0]["phase"], origins[0]["module"]) == (0, "forward", "2")
    assert origins[0]["cause"] == "log of 0"


class _Slow(nn.Module):
    def forward(self, x):
        time.sleep(0.05)
        return x


def test_the_optimizer_time_leaves_out_the_closure(store_path):
    model = nn.Sequential(_Slow(), nn.Linear(6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for _ in range(5):
            opt.step(closure)
    steps = dbg.evidence().steps
    assert (steps.forward_s >= 0.05).all()
    assert np.median(steps.optimizer_s) < np.median(steps.forward_s) / 2, "the closure's sleep is not the optimizer's"
    assert (steps.step_s >= steps.forward_s + steps.optimizer_s).all()


def test_an_error_in_the_closure_reaches_the_caller_unchanged(store_path):
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Stop(Exception):
        pass

    def closure():
        raise Stop("from the user's closure")

    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)):
        try:
            opt.step(closure)
        except Stop as exc:
            assert str(exc) == "from the user's closure"
        else:
            raise AssertionError("the closure's error was swallowed")
        assert opt.step(lambda: torch.tensor(2.0)).item() == 2.0  # the closure's value is step()'s



class _Classifier(nn.Module):
    """Its training code calls its parts (as a LightningModule's training_step does), never forward."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
        self.head = nn.Linear(1, 1)
        self.score = nn.Sigmoid()  # no parameters: calling it after the backbone is not a second entry


def _train_parts(model, store_path, parts):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _data()
    target = y.float().unsqueeze(1)
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for step in range(6):
            p = parts(x)
            weight = torch.tensor(float(step != 4))  # a batch weighted 0: the loss divides by 0
            loss = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean() / weight
            opt.zero_grad()
            loss.backward()
            opt.step()
            copy.deepcopy(model)  # the children's hooks do not travel with the user's module
    return [e["data"] for e in dbg.evidence().events if e["type"] == "nonfinite_origin"]


def test_a_root_never_called_is_replayed_through_the_child_it_calls(store_path):
    torch.manual_seed(0)
    model = _Classifier()
    origins = _train_parts(model, store_path, lambda x: model.score(model.backbone(x)))
    assert origins, "no replay happened"
    assert (origins[0]["step"], origins[0]["phase"]) == (4, "loss")


def test_two_parts_called_one_after_the_other_are_not_replayed_as_one(store_path):
    torch.manual_seed(0)
    model = _Classifier()
    # replaying backbone alone could not tell whether head made the NaN: no replay, no false origin
    assert _train_parts(model, store_path, lambda x: model.score(model.head(model.backbone(x)))) == []
