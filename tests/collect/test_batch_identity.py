"""The batch behind a loss spike: its position in the epoch (from the DataLoader's own counter, epochs
counted per dataset) and a hash of its content, recorded only for steps a running level flags; a
real training loop with one bad batch, and its healthy twin."""

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeldebug as md
from modeldebug.collect.session import watch
from modeldebug.collect.spikes import BatchCounter, SpikeWatch, content_hash
from modeldebug.events import BatchIdentity

BAD = 13  # the position of the bad batch in every epoch (shuffle=False)
BATCH = 16


def _data(bad: bool, n=640, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x[:, :3] @ torch.tensor([1.0, -1.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    if bad:  # a block of rows whose targets were written in the wrong unit
        y[BAD * BATCH:(BAD + 1) * BATCH] *= 6.0
    return x, y.unsqueeze(1)


def _train(store_path, bad: bool, epochs=5, device="cpu"):
    torch.manual_seed(0)
    x, y = _data(bad)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    vx, vy = _data(False, n=64, seed=1)
    val = DataLoader(TensorDataset(vx, vy), batch_size=BATCH)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for _ in range(epochs):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                loss = nn.functional.mse_loss(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():  # an evaluation loader between the epochs counts its own
                for xb, _ in val:
                    model(xb.to(device))
    return dbg, x


def test_a_bad_batch_is_named_by_position_and_content_in_every_epoch(store_path):
    dbg, x = _train(store_path, bad=True)
    ev = dbg.evidence()
    batches = [b for b in ev.events_of(BatchIdentity) if b.position == BAD]
    assert [b.epoch for b in batches] == [0, 1, 2, 3, 4]
    per_epoch = len(x) // BATCH
    assert [b.step for b in batches] == [e * per_epoch + BAD for e in range(5)]
    want = content_hash(x[BAD * BATCH:(BAD + 1) * BATCH])
    assert want and {b.content_hash for b in batches} == {want}
    assert all(b.shape == [BATCH, 8] and b.loss > 5 * b.level for b in batches)
    [f] = [f for f in dbg.report().findings if f.kind == "loss_spike"]
    assert f.severity == "medium" and f.evidence["recovered"] == f.evidence["count"] >= 3
    rows = f.evidence["spikes"]  # (epochs 0 and 1 spike before the rule has 50 losses of running level)
    assert {(r["epoch"], r["position"], r["content_hash"]) for r in rows} == {(e, BAD, want) for e in (2, 3, 4)}
    assert f"batch {BAD} of epoch 2" in f.message


def test_the_healthy_twin_has_no_spike_and_few_flags(store_path):
    dbg, _ = _train(store_path, bad=False)
    ev = dbg.evidence()
    assert not [f for f in dbg.report().findings if f.kind == "loss_spike"]
    assert len(ev.events_of(BatchIdentity)) <= 0.02 * len(ev.steps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_bad_batch_is_named_by_position(store_path):
    """On CUDA the batch is not held on the host: the position names it, no content hash."""
    dbg, _ = _train(store_path, bad=True, device="cuda")
    batches = [b for b in dbg.evidence().events_of(BatchIdentity) if b.position == BAD]
    assert [b.epoch for b in batches] == [0, 1, 2, 3, 4] and all(b.content_hash is None for b in batches)
    [f] = [f for f in dbg.report().findings if f.kind == "loss_spike"]
    assert {(r["epoch"], r["position"]) for r in f.evidence["spikes"]} == {(e, BAD) for e in (2, 3, 4)}


class _Loader:
    """A stand-in for a DataLoader iterator: the attributes the counter reads."""

    def __init__(self, dataset):
        self._dataset, self._num_yielded = dataset, 0

    def next(self):
        self._num_yielded += 1
        return self


def test_epochs_are_counted_per_dataset_and_the_iterator_is_not_kept():
    counter, train, val = BatchCounter(), object(), object()
    seen = []
    for _ in range(2):
        it = _Loader(train)
        seen += [counter.seen(it.next()) for _ in range(3)]
        ref = weakref.ref(it)
        seen.append(counter.seen(_Loader(val).next()))
        del it
        gc.collect()
        assert ref() is None
    assert seen == [(0, 0), (0, 1), (0, 2), (0, 0), (1, 0), (1, 1), (1, 2), (1, 0)]
    assert counter.seen(object()) is None  # not a DataLoader iterator


def test_the_running_level_flags_a_jump_once_and_adapts_to_a_new_level():
    watch_, rng = SpikeWatch(), np.random.default_rng(0)
    noisy = 1.0 + 0.1 * rng.standard_normal(200)
    assert not any(watch_.flags(float(v)) for v in noisy)
    assert watch_.flags(5.0)
    assert not watch_.flags(1.0) and not watch_.flags(float("nan"))
    # a loss that stays up is flagged for a few steps, then it is the level
    flagged = [watch_.flags(4.0) for _ in range(100)]
    assert 1 <= sum(flagged) <= 10 and not any(flagged[20:])
