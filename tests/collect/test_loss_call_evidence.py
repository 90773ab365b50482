"""What the collector records at the loss call, checked against plain torch/numpy: the loss
function's output and the range of its input on sampled steps, one event per new signature (with
the broadcast shape), the sampled targets' constant-prediction loss, and validation's loss function."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.loss_calls import broadcast_shape, constant_loss
from modeldebug.collect.session import watch
from modeldebug.collect.writer import LabelMix
from modeldebug.events import BatchClasses, LossCall, LossTargets


def _run(store_path, loss_fn, out_dim, y, steps=6, evaluate=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, out_dim))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(len(y), 4)
    seen = []  # (loss value, input) of every training call, computed by the plain functions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broadcasting case warns
        with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
            for _ in range(steps):
                opt.zero_grad()
                out = model(x)
                loss = loss_fn(out, y)
                seen.append((loss.item(), out.detach().clone()))
                loss.backward()
                opt.step()
            if evaluate:
                model.eval()
                with torch.no_grad():
                    loss_fn(model(x), y)
    return dbg.evidence(), seen


def test_sampled_steps_carry_the_loss_value_and_its_input_range(store_path):
    y = torch.randint(0, 3, (32,))
    ev, seen = _run(store_path, lambda out, t: F.cross_entropy(out.softmax(1), t), 3, y, evaluate=True)
    s = ev.steps
    assert list(s.loss_calls) == [1] * 6
    np.testing.assert_allclose(s.loss_fn_value, [v for v, _ in seen], rtol=1e-6)
    probs = [out.softmax(1).numpy() for _, out in seen]
    np.testing.assert_allclose(s.loss_input_min, [p.min() for p in probs], rtol=1e-6)
    np.testing.assert_allclose(s.loss_input_max, [p.max() for p in probs], rtol=1e-6)
    np.testing.assert_allclose(s.loss_input_sum_err, [np.abs(p.sum(1) - 1).max() for p in probs], atol=1e-6)
    (call,) = ev.events_of(LossCall)
    assert (call.name, call.input_shape, call.target_shape) == ("cross_entropy", [32, 3], [32])
    assert call.broadcast_shape is None
    assert list(ev.validation.loss_fn) == ["cross_entropy"]


@pytest.mark.parametrize("dim", [1, 0])
def test_for_nll_loss_the_sum_error_is_that_of_the_median_rows_exps(store_path, dim):
    """log-probabilities into NLLLoss: how far the median row's exps sum from 1 over the classes
    (dim 0: normalized over the batch, the wrong dimension)."""
    y = torch.randint(0, 3, (32,))
    ev, seen = _run(store_path, lambda out, t: F.nll_loss(out.log_softmax(dim), t), 3, y)
    logp = [out.log_softmax(dim).numpy().astype(np.float64) for _, out in seen]
    # torch.median: the lower of the two middle values of an even count
    want = [np.sort(np.abs(np.exp(p).sum(1) - 1))[(len(p) - 1) // 2] for p in logp]
    np.testing.assert_allclose(ev.steps.loss_input_sum_err, want, atol=1e-5)
    assert (np.max(want) < 1e-5) if dim == 1 else (np.min(want) > 0.1)


def test_a_broadcasting_call_is_recorded_once_with_its_shape(store_path):
    y = torch.randn(32)
    ev, _ = _run(store_path, nn.MSELoss(), 1, y)
    (call,) = ev.events_of(LossCall)
    assert call.input_shape == [32, 1] and call.target_shape == [32] and call.broadcast_shape == [32, 32]
    (targets,) = ev.events_of(LossTargets)
    rows = y.numpy().astype(np.float64)
    # every step sampled the same batch: TARGET_ROWS of it per step
    assert targets.rows == 6 * 32 and targets.predictor == "the mean"
    assert targets.baseline == pytest.approx(float(np.var(rows)), rel=1e-6)
    y6 = np.tile(rows, 6)  # the shares of the values a bounded output could not reach
    assert (targets.below_zero, targets.below_minus_one, targets.above_one) == pytest.approx(
        (np.mean(y6 < 0), np.mean(y6 < -1), np.mean(y6 > 1)))
    assert targets.rms == pytest.approx(float(np.sqrt(np.mean(y6 ** 2))), rel=1e-6)


def test_reduction_and_options_are_kept(store_path):
    y = torch.randint(0, 3, (16,))
    ev, _ = _run(store_path, lambda o, t: F.cross_entropy(o, t, reduction="sum", label_smoothing=0.1), 3, y, steps=2)
    (call,) = ev.events_of(LossCall)
    assert call.reduction == "sum" and call.options == {"label_smoothing": 0.1}


@pytest.mark.parametrize("name,loss_fn,predictor", [
    ("mse_loss", lambda c, y: F.mse_loss(c, y), "the mean"),
    ("l1_loss", lambda c, y: F.l1_loss(c, y), "the median"),
    ("smooth_l1_loss", lambda c, y: F.smooth_l1_loss(c, y, beta=0.5), "the median"),
    ("huber_loss", lambda c, y: F.huber_loss(c, y, delta=2.0), "the median"),
])
def test_constant_loss_is_the_torch_loss_of_that_constant(name, loss_fn, predictor):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((400, 3)) * 3 + 1
    options = {"beta": 0.5} if name == "smooth_l1_loss" else {"delta": 2.0} if name == "huber_loss" else {}
    baseline, what = constant_loss(name, y, options)
    const = y.mean(0) if predictor == "the mean" else np.median(y, 0)
    expected = loss_fn(torch.tensor(const).expand(400, 3), torch.tensor(y)).item()
    assert what == predictor and baseline == pytest.approx(expected, rel=1e-9)


def test_constant_loss_of_binary_targets_is_the_positive_rate_entropy():
    y = np.array([[1.0], [0.0], [0.0], [0.0]])
    baseline, what = constant_loss("binary_cross_entropy_with_logits", y, {})
    p = torch.full((4, 1), 0.25)
    assert what == "the positive rate"
    assert baseline == pytest.approx(F.binary_cross_entropy(p, torch.tensor(y, dtype=torch.float32)).item(), rel=1e-5)
    assert constant_loss("mse_loss", y, {"reduction": "none"}) == (None, "")
    # a summed loss is recorded per item: its baseline is the per-item one
    assert constant_loss("mse_loss", y, {"reduction": "sum"}) == constant_loss("mse_loss", y, {})


def test_broadcast_shape_only_when_it_grows():
    t = torch.zeros
    assert broadcast_shape("mse_loss", t(8, 1), t(8)) == [8, 8]
    assert broadcast_shape("mse_loss", t(8), t(8, 1)) == [8, 8]
    assert broadcast_shape("mse_loss", t(8, 3), t(3)) is None  # one target row for every sample
    assert broadcast_shape("mse_loss", t(8, 3), t(8, 3)) is None
    assert broadcast_shape("cross_entropy", t(8, 3), t(8)) is None


@pytest.mark.parametrize("name", ["cross_entropy", "mse_loss"])
def test_a_summed_loss_is_recorded_per_item_in_training_and_validation(store_path, name):
    """transformers' models sum the loss and divide by the token count: recorded per item (ignored
    targets left out), as the script reports it, not 100s of times larger."""
    if name == "cross_entropy":
        y = torch.randint(0, 3, (32,))
        y[:8] = -100  # ignored (padding)
        items, out_dim = 24, 3
    else:
        y = torch.randn(32, 2)
        items, out_dim = 64, 2
    ev, seen = _run(store_path, lambda out, t: getattr(F, name)(out, t, reduction="sum"), out_dim, y, evaluate=True)
    np.testing.assert_allclose(ev.steps.loss_fn_value, [v / items for v, _ in seen], rtol=1e-6)
    assert list(ev.validation.loss_fn) == [name]
    assert 0 < ev.validation.loss[0] < 3 * seen[-1][0] / items


def test_with_gradient_accumulation_the_sampled_value_is_the_mean_over_the_micro_batches(store_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(8)]
    means = []
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for i in range(0, 8, 2):
            opt.zero_grad()
            values = []
            for x, y in batches[i:i + 2]:
                loss = F.cross_entropy(model(x), y)
                values.append(loss.item())
                (loss / 2).backward()
            opt.step()
            means.append(np.mean(values) if means else values[0])
    ev = dbg.evidence()
    assert list(ev.steps.loss_calls) == [2] * 4
    # (the first step's micro-batches are held apart until an optimizer step shows what a step is:
    # its value is the first call's)
    np.testing.assert_allclose(ev.steps.loss_fn_value, means, rtol=1e-6)


def test_label_mix_counts_the_probed_batches_of_one_class():
    rng = np.random.default_rng(0)
    mix, probed = LabelMix(), []
    for call in range(1, 161):
        one = rng.random() < 0.3
        y = torch.full((8 + call % 5,), 2) if one else torch.randint(0, 4, (8 + call % 5,))
        mix.training_call("cross_entropy", torch.randn(len(y), 4), y)
        if call % LabelMix.EVERY == 0:
            probed.append((len(y), int(y.min() == y.max())))
    mix.training_call("mse_loss", torch.randn(8, 1), torch.randn(8, 1))  # not a class loss: not probed
    event = mix.finish()
    assert event.batches == len(probed) == 10
    assert event.single_class == sum(s for _, s in probed)
    assert event.median_size == float(np.median([n for n, _ in probed]))
    assert sum(event.lowest_labels.values()) == 10 and set(event.lowest_labels) <= {0, 2}
    assert mix.finish() is None  # written once


def test_a_run_on_label_sorted_batches_writes_them_as_one_class(store_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for step in range(96):
            y = torch.full((16,), step // 32)  # 32 batches of class 0, then 1, then 2
            loss = F.cross_entropy(model(torch.randn(16, 4)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    (event,) = dbg.evidence().events_of(BatchClasses)
    assert (event.batches, event.single_class, event.median_size) == (6, 6, 16.0)
    assert {int(k): v for k, v in event.lowest_labels.items()} == {0: 2, 1: 2, 2: 2}
