"""Reports of real watched runs (md.watch on a small model), one broken and one healthy, for the
exporters to write and the platforms' own readers to read back."""

import pytest
import torch
from torch import nn

import modeldebug as md


def watched_run(store_path: str, lr: float, seed: int = 0):
    """40 SGD steps of a small MLP on labels that follow from the inputs, evaluated on held-out
    data every 10 steps; the report of the run."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(320, 8, generator=g)
    y = x[:, :3].argmax(1)
    x_train, y_train, x_val, y_val = x[:256], y[:256], x[256:], y[256:]
    # batches made beforehand: on a loaded machine, drawing them between steps can read as waiting for data
    batches = [(x_train[i], y_train[i]) for i in torch.randint(0, 256, (40, 32), generator=g)]
    config = md.DebuggingConfig(store_path=store_path, every=2)
    with md.watch(model, opt, config=config) as dbg:
        for step, (xb, yb) in enumerate(batches):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            if step % 10 == 9:
                model.eval()
                with torch.no_grad():
                    nn.functional.cross_entropy(model(x_val), y_val)
                model.train()
    return dbg.report()


@pytest.fixture(scope="session")
def broken_report(tmp_path_factory):
    """A learning rate far too high: findings to export."""
    report = watched_run(str(tmp_path_factory.mktemp("broken") / "runs.db"), lr=20.0)
    assert report.findings, "the planted learning rate should be found"
    return report


@pytest.fixture(scope="session")
def healthy_report(tmp_path_factory):
    report = watched_run(str(tmp_path_factory.mktemp("healthy") / "runs.db"), lr=0.1)
    assert not [f for f in report.findings if f.severity in ("high", "medium")]
    return report
