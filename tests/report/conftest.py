"""Real reports for the HTML tests: small broken trainings watched by modeldebug."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import modeldebug as md  # noqa: E402

XSS = "<img src=x onerror=alert(1)>"


def _train_dead_and_overfit(store: str):
    """A ReLU layer dead from the start (bias -8), a module whose name is markup, and a tiny train set
    evaluated on held-out data (the validation curve)."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("inp", nn.Linear(16, 64))
    model.add_module(XSS, nn.ReLU())  # a module name is user text too
    model.add_module("hidden", nn.Linear(64, 64))
    model.add_module("act", nn.Tanh())
    model.add_module("out", nn.Linear(64, 3))
    nn.init.constant_(model.inp.bias, -8.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 3, (64,), generator=g)
    xv, yv = torch.randn(256, 16, generator=g), torch.randint(0, 3, (256,), generator=g)
    with md.watch(model, opt, config=md.DebuggingConfig(store_path=store, every=5)) as dbg:
        for step in range(240):
            i = (step * 16) % 64
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
            loss.backward()
            opt.step()
            if step % 20 == 19:
                model.eval()
                with torch.no_grad():
                    nn.functional.cross_entropy(model(xv), yv)
                model.train()
    return dbg.report()


def _train_nan(store: str):
    """A hand-written BCE whose log(0) turns the loss into inf/NaN part-way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=g) * 4
    y = (x[:, 0] > 0).float().unsqueeze(1)
    with md.watch(model, opt, config=md.DebuggingConfig(store_path=store)) as dbg:
        for step in range(120):
            i = (step * 32) % 512
            opt.zero_grad()
            p = model(x[i:i + 32])
            loss = -(y[i:i + 32] * torch.log(p) + (1 - y[i:i + 32]) * torch.log(1 - p)).mean()
            loss.backward()
            opt.step()
    return dbg.report()


@pytest.fixture(scope="session")
def reports_store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("report-runs") / "runs.db")


@pytest.fixture(scope="session")
def dead_report(reports_store):
    report = _train_dead_and_overfit(reports_store)
    report.metrics.issue = XSS
    return report


@pytest.fixture(scope="session")
def nan_report(tmp_path_factory):
    return _train_nan(str(tmp_path_factory.mktemp("nan-run") / "runs.db"))
