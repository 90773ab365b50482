"""The listed evidence on an MLP, a CNN with BatchNorm, an LSTM and a Transformer encoder."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeldebug as md
from modeldebug.collect.session import watch


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(self.features(x))


class LSTMTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.head = nn.Linear(24, 5)

    def forward(self, tokens):
        out, (h, c) = self.lstm(self.embed(tokens))
        return self.head(out[:, -1])


@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class Encoder(nn.Module):
    """Returns a dataclass, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.1)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        h = self.encoder(self.proj(x))
        return Output(logits=self.head(h.mean(1)), hidden=h)


def _mlp():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 5))


CASES = {
    "mlp": (_mlp, lambda g: torch.randn(64, 10, generator=g), {"0", "1", "3"}),
    "cnn_batchnorm": (CNN, lambda g: torch.randn(64, 3, 8, 8, generator=g), {"features.0", "features.1", "features.2", "classifier.1"}),
    "lstm": (LSTMTagger, lambda g: torch.randint(0, 50, (64, 7), generator=g), {"embed", "lstm", "head"}),
    "transformer": (Encoder, lambda g: torch.randn(64, 6, 8, generator=g), {"proj", "encoder.layers.0.self_attn", "encoder.layers.1.linear2", "head"}),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_collects_the_listed_evidence(arch, store_path):
    build, inputs, expected_layers = CASES[arch]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build()
    x, y = inputs(g), torch.randint(0, 5, (64,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()

    def logits(out):
        return out.logits if isinstance(out, Output) else out

    with watch(model, opt, config=md.DebuggingConfig(every=2, store_path=store_path)) as dbg:
        for epoch in range(3):
            model.train()
            for xb, yb in loader:
                opt.zero_grad()
                loss_fn(logits(model(xb)), yb).backward()
                opt.step()
            sched.step()
            model.eval()
            with torch.no_grad():
                for xb, yb in loader:
                    loss_fn(logits(model(xb)), yb)
    ev = dbg.evidence()
    steps = ev.steps

    # every step: loss, gradient norm, learning rate, timing split, memory
    assert len(steps) == 12 and list(steps.step) == list(range(12))
    assert np.isfinite(steps.loss).all() and np.isfinite(steps.grad_norm).all()
    assert steps.lr[0] == pytest.approx(1e-3) and steps.lr[-1] == pytest.approx(2.5e-4)
    for col in ("data_s", "forward_s", "backward_s", "optimizer_s", "step_s", "rss_bytes"):
        assert (steps[col] > 0).all(), col
    assert (steps.step_s >= steps.forward_s + steps.backward_s).all()
    # evaluation passes are validation losses, not training steps
    assert list(ev.validation.step) == [4, 8, 12]
    assert np.isfinite(ev.validation.loss).all() and (ev.validation.batches == 4).all()
    with torch.no_grad():  # top-1 accuracy of the last evaluation, measured again
        model.eval()
        hits = sum(int((logits(model(xb)).argmax(1) == yb).sum()) for xb, yb in loader)
    assert ev.validation.accuracy[-1] == pytest.approx(hits / 64)
    # sampled steps: per-layer output and gradient statistics, parameters, inputs, classes
    sampled = set(steps.step[steps.sampled].tolist())
    assert {0, 1, 2, 4, 6} <= sampled and 5 not in sampled
    for name in expected_layers:
        t = ev.layer(name)
        assert set(t.step.tolist()) == sampled, name
        assert np.isfinite(t.mean).all() and np.isfinite(t.grad_norm).all(), name
        assert ev.layers[name].order >= 0
    assert set(ev.layer_stats.layer.tolist()) <= set(ev.layers)
    for name, info in ev.params.items():
        t = ev.param(name)
        assert set(t.step.tolist()) == sampled
        assert info.in_optimizer and info.requires_grad
        assert t.changed.all() and t.has_grad.all(), name
        assert (t.update_ratio > 0).all()
    assert np.isfinite(steps.input_mean[steps.sampled]).all()
    assert sum(ev.class_counts.values()) == 64 * len(sampled) // 4
    # the spec's DebugMetrics
    metrics = dbg.metrics
    assert metrics.steps == 12 and metrics.performance_metrics.forward_time > 0
    assert {m.name for m in metrics.layer_metrics} >= expected_layers
    overhead = ev.run.monitor_overhead
    assert 0 < overhead.time_fraction < 1 and overhead.sampled_steps == len(sampled)


def test_layer_order_follows_the_forward_pass(store_path):
    model = CNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 5, (4,))).backward()
        opt.step()
    order = [l.name for l in dbg.evidence().layers_in_order()]
    assert order[:3] == ["features.0", "features.1", "features.2"] and order[-1] == "classifier.1"
