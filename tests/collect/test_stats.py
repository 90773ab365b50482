"""Device-side reductions + host-side summaries against plain numpy."""

import math

import numpy as np
import pytest
import torch

from modeldebug.collect.stats import SAMPLE, first_float_tensor, reduce, summarize, summarize_many, to_host


def _summary(t, **kw):
    return summarize(reduce(t, units=True), **kw)


@pytest.mark.parametrize(
    "shape", [(7,), (32, 16), (8, 5, 12), (4, 3, 6, 6), (2, 3, 2, 4, 4), (64, 300)], ids=lambda s: "x".join(map(str, s))
)
def test_moments_and_extremes_match_numpy(shape):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g) * 3 + 1
    ref = t.double().numpy()
    s = _summary(t)
    assert s["mean"] == pytest.approx(ref.mean(), rel=1e-4, abs=1e-5)
    assert s["std"] == pytest.approx(ref.std(), rel=1e-4)
    assert s["min"] == pytest.approx(ref.min())
    assert s["max"] == pytest.approx(ref.max())
    assert s["norm"] == pytest.approx(np.linalg.norm(ref), rel=1e-5)
    assert s["max_abs"] == pytest.approx(np.abs(ref).max())
    assert s["nonfinite"] == 0


def test_dead_units_follow_the_unit_dimension():
    # Linear-style [batch, features]: features 0..4 never positive.
    x = torch.rand(16, 10)
    x[:, :4] = -x[:, :4]
    assert _summary(x)["dead_frac"] == pytest.approx(0.4)
    # Conv-style [N, C, H, W]: channel 1 of 3 dead.
    y = torch.rand(4, 3, 5, 5)
    y[:, 1] = 0
    assert _summary(y)["dead_frac"] == pytest.approx(1 / 3)
    # A unit positive for one sample only is alive.
    z = torch.zeros(8, 4)
    z[3, 2] = 1.0
    assert _summary(z)["dead_frac"] == pytest.approx(0.75)


def test_zero_and_saturated_fractions_exact_on_small_tensors():
    x = torch.tensor([0.0, 0.0, 0.5, -0.995, 0.999, 0.1, 0.0, -0.2])
    s = summarize(reduce(x), bounds=(-1.0, 1.0))
    assert s["zero_frac"] == pytest.approx(3 / 8)
    assert s["sat_frac"] == pytest.approx(2 / 8)  # within 1% of the range from a bound


def test_fractions_estimated_from_a_subsample_on_large_tensors():
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(256, 512, generator=g))
    s = _summary(x)
    true_zero = (x == 0).float().mean().item()
    assert len(reduce(x).sample) <= SAMPLE
    assert s["zero_frac"] == pytest.approx(true_zero, abs=0.05)


def test_histogram_counts_the_subsample_over_min_max():
    x = torch.linspace(0, 1, 1000)
    s = summarize(reduce(x), bins=10)
    assert s["hist"].sum() == 1000
    assert (s["hist"] == 100).all()
    assert (s["hist_lo"], s["hist_hi"]) == (0.0, 1.0)


def test_nonfinite_values_are_flagged_and_do_not_break_the_histogram():
    x = torch.randn(5000)
    x[17] = float("nan")
    x[4000] = float("inf")
    s = summarize(reduce(x), bins=8)
    assert s["nonfinite"] >= 1
    assert math.isnan(s["mean"])
    assert s["hist"] is not None and s["hist"].sum() > 0


def test_half_precision_is_reduced_in_float32():
    x = torch.randn(300, 40).half()
    s = _summary(x)
    assert s["mean"] == pytest.approx(x.float().mean().item(), abs=1e-4)


def test_first_float_tensor_walks_tuples_dicts_and_dataclasses():
    from dataclasses import dataclass

    @dataclass
    class Out:
        ids: torch.Tensor
        logits: torch.Tensor

    a = torch.ones(2)
    assert first_float_tensor((torch.arange(3), {"h": a})) is a
    out = Out(torch.arange(2), torch.zeros(3))
    assert first_float_tensor(out) is out.logits
    assert first_float_tensor([1, "x"]) is None


def test_histogram_of_constant_values():
    s = summarize(reduce(torch.zeros(64, 8)), bins=16)  # a layer whose units all died
    assert s["hist"].sum() == 512 and s["zero_frac"] == 1.0


@pytest.mark.parametrize("scale", [1e18, 1e30, 3e38], ids=["1e18", "1e30", "near-float32-max"])
def test_huge_finite_activations_are_finite_and_histogrammed(scale):
    """A blown-up layer: its float32 sum of squares overflows, its values do not."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 300, generator=g) * 2 - 1) * scale
    s = _summary(x)
    assert s["nonfinite"] == 0
    assert s["max"] == pytest.approx(x.max().item())
    assert s["std"] == pytest.approx(x.double().std().item(), rel=0.1)
    s = summarize(reduce(x), bins=16)
    assert s["hist"].sum() == len(reduce(x).sample)


def test_one_copy_for_many_tensors_gives_each_its_own_statistics():
    g = torch.Generator().manual_seed(2)
    tensors = [torch.randn(16, 8, generator=g), torch.randn(3, 4, 5, 5, generator=g) + 2, torch.randn(40, generator=g)]
    extra = [torch.tensor([1.0, 2.0]), torch.arange(3.0)]
    host, rest = to_host([reduce(t, units=True) for t in tensors], extra)
    together = summarize_many(host, bins=8)
    for t, s in zip(tensors, together):
        alone = summarize(reduce(t, units=True), bins=8)
        assert s["mean"] == pytest.approx(t.double().mean().item(), abs=1e-5)
        assert {k: v for k, v in s.items() if k != "hist"} == pytest.approx(
            {k: v for k, v in alone.items() if k != "hist"}, nan_ok=True)
        assert (s["hist"] == alone["hist"]).all()
    assert [r.tolist() for r in rest] == [[1.0, 2.0], [0.0, 1.0, 2.0]]


def test_wide_outputs_estimate_dead_units_from_a_subset():
    x = torch.rand(8, 10_000)
    x[:, ::2] = -1.0  # every other unit dead
    s = summarize(reduce(x, units=True))
    assert s["dead_frac"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("value", [0.0, 3.0, 1e20, -1e30], ids=["zero", "three", "1e20", "-1e30"])
def test_histogram_of_a_constant_has_a_range_around_it(value):
    s = summarize(reduce(torch.full((16, 8), value)), bins=8)
    assert s["hist_lo"] < value < s["hist_hi"] and s["hist"].sum() == 128
