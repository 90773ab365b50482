"""Crashes are the user's: the traceback they see and the crash location in the report show their
own frames, not modeldebug's wrappers (the exception object is the one raised), and a backward on a
tensor without a graph says which of the ways to get one the run shows. The first step of a
zero-code run is replayed like the others when it turns non-finite."""

from __future__ import annotations

import gc
import traceback

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import modeldebug as md
from modeldebug.collect.auto import AutoDebugger
from modeldebug.diagnose import diagnose_text
from modeldebug.events import NonfiniteOrigin, RuntimeErrorDiagnosis
from modeldebug.types import Finding


def _auto(store_path) -> AutoDebugger:
    gc.collect()  # optimizers of earlier tests must not bring their models in
    return AutoDebugger(md.DebuggingConfig(every=1, store_path=str(store_path))).start()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def _crash(dbg, train) -> BaseException:
    """Run ``train`` watched by ``dbg``; the exception it raised (the run stopped as crashed)."""
    try:
        train()
    except Exception as exc:  # noqa: BLE001 - the crash is the point
        dbg.stop("crashed", error=exc)
        return exc
    raise AssertionError("the training did not crash")


def _diagnosis(dbg) -> Finding:
    (event,) = dbg.evidence().events_of(RuntimeErrorDiagnosis)
    return Finding.model_validate(event.finding)


def _frames(exc: BaseException) -> list[str]:
    return [f.filename for f in traceback.extract_tb(exc.__traceback__)]


# --- our frames are not the user's ---------------------------------------------------------------


class _Flaky(Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        if i == 20:
            raise KeyError(f"sample {i} is missing")
        return torch.randn(8), torch.randn(1)


def _train_backward_fails(model, opt):
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()


def _train_loss_fails(model, opt):
    x, y = torch.randn(16, 8), torch.randn(16, 3)
    for _ in range(3):
        opt.zero_grad()
        loss = nn.MSELoss()(model(x), y[:8])  # a loss module calls the patched functional loss
        loss.backward()
        opt.step()


def _train_loader_fails(model, opt, workers):
    for x, y in DataLoader(_Flaky(), batch_size=8, num_workers=workers):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("where", ["backward", "loss", "loader", "loader_worker"])
def test_the_traceback_and_the_crash_location_are_the_users(tmp_path, where):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train = {"backward": lambda: _train_backward_fails(model, opt), "loss": lambda: _train_loss_fails(model, opt),
             "loader": lambda: _train_loader_fails(model, opt, 0),
             "loader_worker": lambda: _train_loader_fails(model, opt, 1)}[where]
    dbg = _auto(tmp_path / "runs.db")
    exc = _crash(dbg, train)
    expected = {"backward": RuntimeError, "loss": RuntimeError, "loader": KeyError, "loader_worker": KeyError}[where]
    assert type(exc) is expected  # the exception itself, not a wrapper of ours
    files = _frames(exc)
    assert not [f for f in files if "/modeldebug/" in f.replace("\\", "/")], files
    assert files[0] == __file__  # the traceback starts in the user's code, as without modeldebug
    raised_at = _diagnosis(dbg).evidence["raised_at"]
    assert raised_at.startswith(__file__ + ":"), raised_at
    if where != "loader":  # the loader raises in the user's own __getitem__
        line = traceback.extract_tb(exc.__traceback__)[-1]
        user_lines = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
        assert raised_at == f"{__file__}:{user_lines[-1].lineno}" and line.filename != __file__


def test_a_saved_traceback_through_our_wrappers_points_at_the_user_line():
    text = """Traceback (most recent call last):
  File "/home/me/train.py", line 11, in <module>
    loss.backward()
  File "/opt/venv/lib/python3.11/site-packages/modeldebug/collect/patches.py", line 139, in backward
    return _run_backward(original, self, (self, *args), kwargs)
  File "/opt/venv/lib/python3.11/site-packages/torch/_tensor.py", line 623, in backward
    torch.autograd.backward(
  File "/opt/venv/lib/python3.11/site-packages/torch/autograd/__init__.py", line 395, in backward
    _engine_run_backward(
RuntimeError: element 0 of tensors does not require grad and does not have a grad_fn
"""
    f = diagnose_text(text)
    assert f.evidence["raised_at"] == "/home/me/train.py:11"
    assert f.evidence.get("no_graph_reason") is None  # the text cannot tell which: all ways are named
    for words in ("requires grad", "torch.no_grad()", "detached"):
        assert words in f.message


# --- backward on a tensor without a graph: which way it lost it ----------------------------------


def _frozen(model, x, y):
    for p in model.parameters():
        p.requires_grad_(False)
    return nn.functional.mse_loss(model(x), y)


def _no_grad(model, x, y):
    with torch.no_grad():
        out = model(x)
    return nn.functional.mse_loss(out, y)


def _detached(model, x, y):
    return torch.tensor(nn.functional.mse_loss(model(x), y).item())


def _inference(model, x, y):
    with torch.inference_mode():
        return nn.functional.mse_loss(model(x), y)


LOST = {"frozen": (_frozen, "frozen", "requires_grad=False"), "no_grad": (_no_grad, "no_grad", "grad disabled"),
        "detached": (_detached, "detached", "graph was cut"), "inference": (_inference, "inference_mode", "inference")}


@pytest.mark.parametrize("first_step", [True, False], ids=["first_step", "later_step"])
@pytest.mark.parametrize("case", sorted(LOST))
def test_a_graphless_loss_says_why(tmp_path, case, first_step):
    build, reason, words = LOST[case]
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)

    def train():
        for i in range(3):
            opt.zero_grad()
            broken = first_step or i == 2
            loss = build(model, x, y) if broken else nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()

    dbg = _auto(tmp_path / "runs.db")
    _crash(dbg, train)
    f = _diagnosis(dbg)
    assert f.evidence["detail"] == "no_graph" and f.evidence.get("no_graph_reason") == reason, f.message
    assert words in f.message, f.message
    assert f.step == (0 if first_step else 2)  # the step the crash ended, not the count after it
    assert "no specific advice" not in " ".join(r.description for r in f.recommendations)


def test_the_api_debugger_says_why_too(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    dbg = md.Debugger(md.DebuggingConfig(every=1), store=str(tmp_path / "runs.db"))
    dbg.attach(model)
    dbg.start()

    def train():
        for i in range(3):
            opt.zero_grad()
            loss = (_no_grad if i == 1 else lambda m, a, b: nn.functional.mse_loss(m(a), b))(model, x, y)
            loss.backward()
            opt.step()

    _crash(dbg, train)
    f = _diagnosis(dbg)
    assert f.evidence.get("no_graph_reason") == "no_grad", f.message


# --- the first step of a zero-code run -----------------------------------------------------------


class _LogNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(torch.log(self.body(x)))  # the ReLU's zeros: log(0) at the very first step


def _train(model, steps=4, **call):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x, **call) if call else model(x)
        ((out - y) ** 2).mean().backward()
        opt.step()


def test_a_nan_at_the_first_step_is_replayed_to_its_op(tmp_path):
    torch.manual_seed(0)
    model = _LogNet()
    dbg = _auto(tmp_path / "runs.db")
    _train(model)
    dbg.stop()
    (origin, *_) = dbg.evidence().events_of(NonfiniteOrigin)
    assert origin.step == 0 and origin.phase == "forward" and origin.op == "log" and origin.cause == "log of 0"
    (f,) = [f for f in dbg.report().findings if f.kind == "nan_or_inf"]
    assert "`log`" in f.message and "earlier update" not in f.message, f.message
    assert f.causes[0] == "numerically_unstable_op"


def test_keyword_arguments_of_the_first_call_are_replayed(tmp_path):
    class Scaled(_LogNet):
        def forward(self, x, scale=1.0):
            return self.head(torch.log(self.body(x) * scale))

    torch.manual_seed(0)
    dbg = _auto(tmp_path / "runs.db")
    _train(Scaled(), scale=2.0)
    dbg.stop()
    (origin, *_) = dbg.evidence().events_of(NonfiniteOrigin)
    assert origin.step == 0 and origin.op == "log"


def test_weights_non_finite_before_any_update_are_not_blamed_on_one(tmp_path):
    model = _model()
    with torch.no_grad():
        model[2].weight[0, 3] = float("nan")  # as a broken checkpoint would load it
    dbg = _auto(tmp_path / "runs.db")
    _train(model)
    dbg.stop()
    (origin, *_) = dbg.evidence().events_of(NonfiniteOrigin)
    assert origin.step == 0 and origin.phase == "weights"
    (f,) = [f for f in dbg.report().findings if f.kind == "nan_or_inf"]
    assert "before any update" in f.message and "earlier update" not in f.message, f.message
    assert f.causes[0] == "bad_weight_init"


def test_a_healthy_first_step_is_not_replayed(tmp_path):
    dbg = _auto(tmp_path / "runs.db")
    _train(_model())
    dbg.stop()
    ev = dbg.evidence()
    assert not ev.events_of(NonfiniteOrigin) and len(ev.steps) == 4
    assert not [f for f in dbg.report().findings if f.kind == "nan_or_inf"]
