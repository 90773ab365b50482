"""Parameter identity, sample fingerprints and models found when they start training: what the
collector records, against what the loop itself did."""

from __future__ import annotations

import gc
import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeldebug as md
from modeldebug.collect.auto import AutoDebugger
from modeldebug.collect.fingerprints import COLUMNS, Fingerprints, source_of
from modeldebug.events import EvalOverlap, NewParameters


def _auto(store_path) -> AutoDebugger:
    gc.collect()  # optimizers of earlier tests must not bring their models in
    return AutoDebugger(md.DebuggingConfig(every=1, store_path=store_path)).start()


# --- fingerprints --------------------------------------------------------------------------------


def test_a_sample_has_one_fingerprint_whatever_batch_it_is_in():
    torch.manual_seed(0)
    f = Fingerprints()
    for x in (torch.randn(50, 3, 17, 19), torch.randn(40, 24, dtype=torch.float64), torch.randint(0, 50, (30, 35))):
        whole = f._fingerprint(x, 1000)
        shuffled = torch.randperm(len(x))
        again = f._fingerprint(x[shuffled][:7], 1000)
        assert torch.equal(again, whole[shuffled][:7])
        assert len(set(whole.tolist())) == len(x)  # distinct samples, distinct fingerprints
    big = torch.randn(4, 10 * COLUMNS)
    other = big.clone()
    other[:, 1] += 1  # a value outside the strided columns: the same fingerprint (a sample, not a checksum)
    other[:, 0] += 1
    assert not torch.equal(f._fingerprint(big, 8), f._fingerprint(other, 8))


def test_the_batch_source_is_its_loader_dataset_or_its_storage():
    x = torch.randn(10, 3)
    assert source_of(x[2:5], None) == source_of(x, None)
    assert source_of(x[[1, 2]], None) != source_of(x, None)
    ds = TensorDataset(x)
    assert source_of(x, ds) == ("dataset", id(ds))


def _train_and_evaluate(store_path, val_from_train: bool, eval_on_train_loader: bool = False):
    torch.manual_seed(0)
    x, y = torch.randn(300, 8), torch.randint(0, 3, (300,))
    train = DataLoader(TensorDataset(x[:240], y[:240]), batch_size=16, shuffle=True)
    held = (x[:240], y[:240]) if val_from_train else (x[240:], y[240:])
    val = DataLoader(TensorDataset(*held), batch_size=60)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dbg = _auto(store_path)
    try:
        for _ in range(3):
            model.train()
            for xb, yb in train:
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                for xb, yb in itertools.chain(val, train if eval_on_train_loader else []):
                    nn.functional.cross_entropy(model(xb), yb)
    finally:
        dbg.stop()
    [e] = dbg.evidence().events_of(EvalOverlap)
    return e


def test_validation_built_from_the_training_tensors_is_all_training_samples(store_path):
    e = _train_and_evaluate(store_path, val_from_train=True)
    assert (e.train_distinct, e.train_size) == (240, 240)
    [s] = e.sources
    assert s["samples"] == 3 * 240 and s["distinct"] == s["in_train"] == 240


def test_a_held_out_split_shares_no_sample_and_the_training_loader_is_left_out(store_path):
    e = _train_and_evaluate(store_path, val_from_train=False, eval_on_train_loader=True)
    [s] = e.sources  # evaluating with the training loader itself is not a validation source
    assert s["distinct"] == 60 and s["in_train"] == 0


# --- parameters created in forward() -------------------------------------------------------------


class LazyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = None

    def forward(self, x):
        h = self.body(x).relu()
        self.head = nn.Linear(8, 2)
        return self.head(h)


def test_a_module_created_in_forward_is_new_at_every_sampled_step(store_path):
    torch.manual_seed(0)
    model = LazyHead()
    model(torch.randn(2, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dbg = _auto(store_path)
    try:
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(16, 6)), torch.randint(0, 2, (16,))).backward()
            opt.step()
    finally:
        dbg.stop()
    events = dbg.evidence().events_of(NewParameters)
    assert [e.at_step for e in events] == [1, 2, 3]  # step 0's head is the one registered
    assert all(e.params == ["head.weight", "head.bias"] and e.numel == 18 and e.in_optimizer == 0 for e in events)


def test_parameters_registered_once_are_not_new(store_path):
    model = nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dbg = _auto(store_path)
    try:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
    finally:
        dbg.stop()
    assert dbg.evidence().events_of(NewParameters) == []


# --- models found when they start training --------------------------------------------------------


def _gan_steps(d, g, opt_d, opt_g, steps, g_from):
    for step in range(steps):
        opt_d.zero_grad()
        fake = g(torch.randn(8, 4)) if g is not None else torch.randn(8, 3)
        (d(torch.randn(8, 3)).mean() - d(fake.detach()).mean()).backward()
        opt_d.step()
        if step >= g_from:
            opt_g.zero_grad()
            d(fake).mean().backward()
            opt_g.step()


def test_a_model_whose_optimizer_exists_is_watched_from_the_start(store_path):
    torch.manual_seed(0)
    d, g = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)), nn.Sequential(nn.Linear(4, 3))
    opt_d, opt_g = torch.optim.Adam(d.parameters()), torch.optim.Adam(g.parameters())
    dbg = _auto(store_path)
    try:
        _gan_steps(d, g, opt_d, opt_g, steps=8, g_from=4)
    finally:
        dbg.stop()
    ev = dbg.evidence()
    assert {i.model for i in ev.params.values()} == {"Sequential", "Sequential2"}
    assert len(ev.params) == 6
    assert ev.param("Sequential2.0.weight")["changed"].any()  # the generator's updates are measured


def test_a_model_whose_optimizer_is_made_later_is_watched_when_it_steps(store_path):
    torch.manual_seed(0)
    d, g = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)), nn.Sequential(nn.Linear(4, 3))
    opt_d = torch.optim.Adam(d.parameters())
    dbg = _auto(store_path)
    try:
        _gan_steps(d, None, opt_d, None, steps=3, g_from=99)  # the generator is not called yet
        opt_g = torch.optim.Adam(g.parameters())
        _gan_steps(d, g, opt_d, opt_g, steps=4, g_from=0)
    finally:
        dbg.stop()
    ev = dbg.evidence()
    # The first model keeps the names its records were written with; the later one is qualified.
    assert sorted(ev.params) == ["0.bias", "0.weight", "2.bias", "2.weight", "Sequential2.0.bias",
                                 "Sequential2.0.weight"]
    assert ev.param("Sequential2.0.weight")["changed"].any()
    # 7 iterations: the one where the generator's optimizer first steps counts as two steps (its
    # optimizer is adopted then, as the last of the cycle), as for any optimizer adopted later.
    assert len(ev.steps) == 8


def test_evaluating_the_training_tensors_directly_is_the_training_data_not_a_validation_set(store_path):
    # A full-set training-loss pass (model(X) on the tensors the training loader's dataset holds) is
    # evaluation on the training data on purpose, as through the training loader; a slice of a
    # larger tensor whose rest is held out is not taken for it.
    torch.manual_seed(0)
    x, y = torch.randn(240, 8), torch.randint(0, 3, (240,))
    pool = torch.randn(300, 8)
    part = pool[:240]  # training rows that are a view of a larger storage
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    f = Fingerprints()
    f.add_train(x[:16], source_of(x[:16], (ds := TensorDataset(x, y))), len(ds), ds)
    f.add_eval(x, source_of(x, None))
    summary = f.summary()
    assert summary is not None and summary.sources == []  # the training tensors themselves: left out
    g = Fingerprints()
    g.add_train(part[200:216], source_of(part[200:216], (ds2 := TensorDataset(part))), len(ds2), ds2)
    g.add_eval(pool[200:], source_of(pool[200:], None))
    [src] = g.summary().sources
    assert src["in_train"] == 16  # rows 200-215 were trained on: still seen
    del model, opt
