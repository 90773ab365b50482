"""On a CUDA device: the monitor never waits for the device per layer, and reads its memory.

``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronising call (``.item()``, a
blocking device-to-host copy, ``bincount``, boolean indexing ...) emit a warning. A training loop
that itself never synchronises is run under the monitor with every statistic every step, on a
shallow and on a deep model: the monitor's synchronisations per step must not grow with the
layers (one host copy per sampled step, one per batch of unsampled steps).
Skipped without CUDA; run on a GPU machine with ``pytest tests/collect/test_cuda.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PACKAGE = str(Path(md.__file__).parent)


def _mlp(depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(64, 128), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(128, 128), nn.ReLU()]
    layers += [nn.Linear(128, 10)]
    return nn.Sequential(*layers).cuda()


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 64, device="cuda"), torch.randint(0, 10, (n,), device="cuda")


def _syncs(depth: int, steps: int, store_path: str | None, **config) -> tuple[list[str], list[str], int]:
    """Synchronising calls during ``steps`` steps: (all, those in modeldebug's code, layers watched)."""
    torch.manual_seed(0)
    model = _mlp(depth)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x, y = _batch(256)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # no .item(): the loop never waits for the device
        opt.step()

    def counted(n: int) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(n):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return [w for w in caught if "synchroniz" in str(w.message)]

    dbg = None
    if store_path is not None:
        dbg = md.watch(model, opt, config=md.DebuggingConfig(store_path=store_path, **config)).start()
    try:
        counted(5)  # warm-up, not counted: cuBLAS handles, momentum buffers, the first sampled steps
        torch.cuda.synchronize()
        syncs = counted(steps)
        torch.cuda.synchronize()
    finally:
        layers = len(dbg.layer_info) if dbg is not None else 0
        if dbg is not None:
            dbg.stop()
    where = [f"{w.filename}:{w.lineno}" for w in syncs]
    return where, [w for w in where if w.startswith(PACKAGE)], layers


def test_plain_loop_does_not_synchronise():
    syncs, _, _ = _syncs(4, 32, None)
    assert syncs == []


@pytest.mark.parametrize("config", [{"every": 1}, {}], ids=["every-step", "default"])
def test_the_monitor_never_waits_for_the_device(tmp_path, config):
    """Statistics reach the host through non-blocking copies polled at later steps: no
    synchronisation per layer, nor per step, while training runs (only at stop)."""
    steps = 48
    shallow, shallow_ours, n_shallow = _syncs(3, steps, str(tmp_path / "a.db"), **config)
    deep, deep_ours, n_deep = _syncs(30, steps, str(tmp_path / "b.db"), **config)
    print(f"{config}: {len(shallow)} syncs over {steps} steps with {n_shallow} layers, {len(deep)} with "
          f"{n_deep} layers; at {sorted(set(shallow + deep))}")
    assert n_deep > 5 * n_shallow
    assert shallow == shallow_ours and deep == deep_ours  # the loop itself never synchronises
    assert deep_ours == [] and shallow_ours == []


def test_statistics_arrive_without_a_sync(tmp_path):
    """Non-blocking copies still deliver every step's numbers: the records match a plain run."""
    torch.manual_seed(0)
    model = _mlp(4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = _batch(256)
    losses = []
    with md.watch(model, opt, config=md.DebuggingConfig(every=3, store_path=str(tmp_path / "s.db"))) as dbg:
        for _ in range(40):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            losses.append(loss.detach())
            loss.backward()
            opt.step()
    ev = dbg.evidence()
    assert ev.steps.loss.tolist() == pytest.approx(torch.stack(losses).tolist(), rel=1e-6)
    assert set(ev.layer_stats.step.tolist()) == {0, 1, 2} | set(range(0, 40, 3))  # warm-up, then every 3rd
    assert (ev.param_stats.changed).all()


def test_cuda_memory_is_recorded_every_step(tmp_path):
    torch.manual_seed(0)
    model = _mlp(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _batch(512)
    with md.watch(model, opt, config=md.DebuggingConfig(store_path=str(tmp_path / "m.db"))) as dbg:
        for _ in range(20):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    steps = dbg.evidence().steps
    assert len(steps) == 20
    allocated = torch.cuda.memory_allocated()
    assert (steps.cuda_allocated > 0).all() and (steps.cuda_reserved >= steps.cuda_allocated).all()
    assert steps.cuda_allocated[-1] == pytest.approx(allocated, rel=0.5)
    assert (steps.cuda_peak >= steps.cuda_allocated).all()
    assert (dbg.report().run.device or "").startswith("cuda")


def test_a_nan_batch_is_flagged_on_an_unsampled_step(tmp_path):
    torch.manual_seed(0)
    model = _mlp(3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    y = torch.randint(0, 10, (32,), device="cuda")
    with md.watch(model, opt, config=md.DebuggingConfig(every=3, store_path=str(tmp_path / "n.db"))) as dbg:
        for step in range(11):
            x = torch.randn(32, 64, device="cuda")
            if step == 10:  # unsampled (every 3rd is), and the last: later steps would all be NaN
                x[3, 5] = float("nan")
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    steps = dbg.evidence().steps
    assert steps.input_nonfinite.astype(bool).tolist() == [False] * 10 + [True]
