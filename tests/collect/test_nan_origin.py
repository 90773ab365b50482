"""NaN and Inf origin: the first module and op, forward or backward, found by replaying the step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.nan_origin import locate
from modeldebug.collect.session import watch


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Normalize(nn.Module):
    def forward(self, x):
        return x / x.sum(dim=1, keepdim=True)


class Sharpen(nn.Module):
    def forward(self, x):
        return torch.exp(x * 100)


class RowNorm(nn.Module):
    """Scales by each row's length: sqrt(sum x^2) has an infinite derivative where a row is all 0."""

    def forward(self, x):
        return x + torch.sqrt((x * x).sum(dim=1, keepdim=True))


class Explode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad / torch.zeros_like(grad)


class Custom(nn.Module):
    def forward(self, x):
        return Explode.apply(x)


def _net(middle, dead=False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Sequential(nn.ReLU(), middle), nn.Linear(8, 3))
    if dead:  # every unit negative: ReLU gives all zeros, so x / x.sum() divides by 0
        with torch.no_grad():
            net[0].weight.fill_(0.0)
            net[0].bias.fill_(-1.0)
            net[1].weight.fill_(0.0)
            net[1].bias.fill_(-1.0)
    return net


def _row_norm_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8, bias=False), RowNorm(), nn.Linear(8, 3))


def _batch(g, zero_row=False):
    x = torch.randn(16, 4, generator=g)
    if zero_row:  # an all-zero sample: its row norm is 0
        x[5] = 0
    return x


# build, phase, module, op, cause, batch with a zero row
CASES = {
    "log_of_zero": (lambda: _net(Log()), "forward", "2.1", "log", "log of 0", False),
    "division_by_zero": (lambda: _net(Normalize(), dead=True), "forward", "2.1", "div", "division by 0", False),
    "exp_overflow": (lambda: _net(Sharpen()), "forward", "2.1", "exp", "exp overflow", False),
    "sqrt_at_zero_backward": (_row_norm_net, "backward", "1", "SqrtBackward0", "gradient of sqrt at 0", True),
    "custom_function_backward": (lambda: _net(Custom()), "backward", "2.1", "ExplodeBackward", "custom autograd function Explode", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_locate_names_module_op_and_cause(case):
    build, phase, module, op, cause, zero_row = CASES[case]
    net = build()
    origin = locate(net, (_batch(torch.Generator().manual_seed(0), zero_row),), {})
    assert (origin.phase, origin.module, origin.op) == (phase, module, op)
    assert cause in origin.cause


def test_locate_restores_buffers_and_random_state():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), Log())
    before = {n: b.clone() for n, b in net.named_buffers()}
    x = torch.randn(16, 4)
    rng = torch.get_rng_state()
    locate(net, (x,), {})
    assert all(torch.equal(before[n], b) for n, b in net.named_buffers())
    assert torch.equal(rng, torch.get_rng_state())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_nan_in_the_batch_is_the_data_not_the_model():
    x = torch.randn(16, 4)
    x[3, 2] = float("nan")
    origin = locate(_net(nn.Identity()), (x,), {})
    assert origin.phase == "input" and origin.details["input"]["nan"] == 1


def test_weights_already_blown_up():
    net = _net(nn.Identity())
    with torch.no_grad():
        net[3].weight[0, 0] = float("inf")
    origin = locate(net, (torch.randn(16, 4),), {})
    assert origin.phase == "weights" and origin.module == "3" and origin.details["parameter"] == "3.weight"


def test_a_loss_outside_the_model():
    origin = locate(_net(nn.Identity()), (torch.randn(16, 4),), {})
    assert origin.phase == "loss" and "blown_up" not in origin.details


class _Recurrent(nn.Module):
    """A ReLU RNN over 80 time steps whose recurrent weights multiply the state's size each step."""

    def __init__(self, std: float):
        super().__init__()
        self.rnn = nn.RNN(4, 64, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(64, 1)
        nn.init.normal_(self.rnn.weight_hh_l0, 0.0, std)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_activations_blown_up_inside_the_model_are_named_where_they_grow():
    torch.manual_seed(0)
    x = torch.randn(32, 80, 4)
    origin = locate(_Recurrent(std=0.25), (x,), {})
    grown = origin.details["blown_up"]
    assert (origin.phase, origin.module, origin.module_type, grown["module"]) == ("loss", "rnn", "RNN", "rnn")
    assert grown["input"] == pytest.approx(float(x.abs().max())) and grown["ratio"] >= 1e6
    assert "rnn turns inputs of at most" in origin.cause
    # The same model at the default init keeps the scale: a loss-side NaN is the loss's.
    assert "blown_up" not in locate(_Recurrent(std=0.05), (x,), {}).details


@pytest.mark.parametrize("case", ["log_of_zero", "sqrt_at_zero_backward", "custom_function_backward"])
def test_the_session_replays_the_first_bad_step_before_the_weights_change(case, store_path):
    build, phase, module, op, cause, zero_row = CASES[case]
    net = build()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    with watch(net, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for _ in range(6):
            x, y = _batch(g, zero_row), torch.randint(0, 3, (16,), generator=g)
            opt.zero_grad()
            F.cross_entropy(net(x).clamp(-1e4, 1e4), y).backward()
            opt.step()
    ev = dbg.evidence()
    origins = [e["data"] for e in ev.events if e["type"] == "nonfinite_origin"]
    assert origins, "no replay happened"
    first = origins[0]
    assert (first["step"], first["phase"], first["module"], first["op"]) == (0, phase, module, op)
    assert len(ev.steps) == 6 and len(origins) <= 3


def test_nan_in_one_batch_is_found_as_a_data_issue(store_path):
    net = _net(nn.Identity())
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with watch(net, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for i in range(5):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            if i == 2:
                x[0, 0] = float("nan")
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    origins = [e["data"] for e in dbg.evidence().events if e["type"] == "nonfinite_origin"]
    assert origins[0]["phase"] == "input" and origins[0]["step"] == 2


def test_a_layer_that_scales_tiny_inputs_up_to_ordinary_ones_did_not_blow_up():
    """A LayerNorm fed values of 1e-7 returns values of ~1: 1e7x its input, nothing large."""
    net = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 3))
    origin = locate(net, (1e-7 * torch.randn(16, 8),), {})
    assert origin.phase == "loss" and "blown_up" not in origin.details
