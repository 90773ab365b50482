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


def _syncs(depth: int, steps: int, store_path: str | None, **config) -> tuple[int, int, int]:
    """Synchronising calls during ``steps`` steps: (total, in modeldebug's code, layers watched)."""
    torch.manual_seed(0)
    model = _mlp(depth)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.randn(256, 64, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # no .item(): the loop never waits for the device
        opt.step()

    dbg = None
    if store_path is not None:
        dbg = md.watch(model, opt, config=md.DebuggingConfig(store_path=store_path, **config)).start()
    try:
        for _ in range(5):  # warm-up outside the count: cuBLAS handles, the first sampled steps
            step()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    finally:
        layers = len(dbg.layer_info) if dbg is not None else 0
        if dbg is not None:
            dbg.stop()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    ours = [w for w in syncs if w.filename.startswith(PACKAGE)]
    return len(syncs), len(ours), layers


def test_plain_loop_does_not_synchronise():
    total, _, _ = _syncs(4, 32, None)
    assert total == 0


@pytest.mark.parametrize("config", [{"every": 1}, {}], ids=["every-step", "default"])
def test_synchronisations_do_not_grow_with_layers(tmp_path, config):
    steps = 48
    shallow, shallow_ours, n_shallow = _syncs(3, steps, str(tmp_path / "a.db"), **config)
    deep, deep_ours, n_deep = _syncs(30, steps, str(tmp_path / "b.db"), **config)
    print(f"{config}: {shallow} syncs over {steps} steps with {n_shallow} layers, {deep} with {n_deep} layers")
    assert n_deep > 5 * n_shallow
    assert shallow == shallow_ours and deep == deep_ours  # every one of them is the monitor's
    # At most one per step (sampled steps copy their statistics once), never one per layer.
    assert deep <= steps and deep <= shallow + 2
    if not config:  # the default samples a few steps; the rest are copied in batches of 16
        assert deep <= steps // 4


def test_cuda_memory_is_recorded_every_step(tmp_path):
    torch.manual_seed(0)
    model = _mlp(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(512, 64, device="cuda")
    y = torch.randint(0, 10, (512,), device="cuda")
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
