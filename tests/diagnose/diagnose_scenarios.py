"""Real crash scenarios: small torch programs that raise for real on CPU.

Each scenario returns ``(module_names, thunk)``: the names built from the models'
``named_modules()`` (``module_names_of``) and a function that raises. The expectations say which
cause, module and words (sizes, dtypes, code) the diagnosis must contain.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeldebug.diagnose import module_names_of


@dataclass
class Scenario:
    id: str
    build: Callable[[], tuple[dict[int, str], Callable[[], Any]]]
    cause: str
    module: str | None  # evidence.module: qualified name, or the class when it is not in the models
    words: list[str]  # each must appear in the message or a recommendation
    near_module: str | None = None  # backward errors: the layer the failing node comes after
    contract_causes: list[str] = field(default_factory=list)  # must be among finding.causes


def seq(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


# --- shape_mismatch ---------------------------------------------------------------------------


def linear_after_flatten():
    model = seq(features=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), flatten=nn.Flatten(),
                classifier=nn.Sequential(nn.Linear(512, 10)))
    return module_names_of(model), lambda: model(torch.randn(4, 3, 16, 16))


def conv_grayscale():
    model = seq(stem=nn.Conv2d(3, 16, 3), act=nn.ReLU())
    return module_names_of(model), lambda: model(torch.randn(8, 1, 28, 28))


def conv_channels_last():
    model = seq(stem=nn.Conv2d(3, 16, 3), act=nn.ReLU())
    return module_names_of(model), lambda: model(torch.randn(2, 32, 32, 3))


def conv_flat_input():
    model = seq(conv1=nn.Conv2d(1, 8, 3), act=nn.ReLU())
    return module_names_of(model), lambda: model(torch.randn(8, 784))


class TextModel(nn.Module):
    def __init__(self, lstm_in=32):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.rnn = nn.LSTM(lstm_in, 64, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


def lstm_input_size():
    model = TextModel(lstm_in=32)
    return module_names_of(model), lambda: model(torch.randint(0, 100, (4, 10)))


def lstm_4d_input():
    model = seq(rnn=nn.LSTM(32, 64, batch_first=True))
    return module_names_of(model), lambda: model(torch.randn(4, 10, 4, 8))


class Attention(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        q = self.q(x)
        k = self.k(x)
        scores = q @ k  # forgot k.transpose(-2, -1)
        return scores.softmax(-1) @ self.v(x)


def attention_missing_transpose():
    model = seq(attn=Attention(8), out=nn.Linear(8, 2))
    return module_names_of(model), lambda: model(torch.randn(2, 5, 8))


def batchnorm_features():
    model = seq(fc=nn.Linear(10, 64), bn=nn.BatchNorm1d(32))
    return module_names_of(model), lambda: model(torch.randn(4, 10))


def ce_batch_size_from_view():
    model = seq(fc=nn.Linear(8, 20))
    crit = nn.CrossEntropyLoss()
    names = module_names_of(model, ("criterion.", crit))
    return names, lambda: crit(model(torch.randn(4, 8)).view(-1, 10), torch.randint(0, 10, (4,)))


def bce_target_shape():
    model = seq(fc=nn.Linear(8, 1))
    crit = nn.BCEWithLogitsLoss()
    names = module_names_of(model, ("criterion.", crit))
    return names, lambda: crit(model(torch.randn(8, 8)), torch.randint(0, 2, (8,)).float())


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)

    def forward(self, x):
        return x + self.proj(x)


def residual_width():
    model = seq(block=Residual())
    return module_names_of(model), lambda: model(torch.randn(4, 16))


class SkipJoin(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x, skip):
        return torch.cat([self.up(x), skip], dim=1)


def skip_connection_resolution():
    join = SkipJoin()
    model = seq(join=join)
    return module_names_of(model), lambda: model[0](torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))


# --- dtype_mismatch ---------------------------------------------------------------------------


def linear_float64_numpy():
    model = seq(fc=nn.Linear(4, 2))
    x = torch.from_numpy(np.random.rand(3, 4))  # float64
    return module_names_of(model), lambda: model(x)


def conv_float64():
    model = seq(conv=nn.Conv2d(3, 4, 3))
    return module_names_of(model), lambda: model(torch.randn(1, 3, 8, 8, dtype=torch.float64))


def uint8_images():
    model = seq(flatten=nn.Flatten(), fc=nn.Linear(12, 2))
    return module_names_of(model), lambda: model(torch.randint(0, 255, (2, 3, 2, 2), dtype=torch.uint8))


def bce_long_target():
    model = seq(fc=nn.Linear(8, 1), sig=nn.Sigmoid())
    crit = nn.BCELoss()
    names = module_names_of(model, ("criterion.", crit))
    return names, lambda: crit(model(torch.randn(4, 8)).squeeze(1), torch.randint(0, 2, (4,)))


def bce_logits_long_target():
    model = seq(fc=nn.Linear(8, 1))
    crit = nn.BCEWithLogitsLoss()
    names = module_names_of(model, ("criterion.", crit))
    return names, lambda: crit(model(torch.randn(4, 8)).squeeze(1), torch.randint(0, 2, (4,)))


def ce_float_target():
    model = seq(fc=nn.Linear(8, 5))
    crit = nn.CrossEntropyLoss()
    names = module_names_of(model, ("criterion.", crit))
    return names, lambda: crit(model(torch.randn(4, 8)), torch.randint(0, 5, (4,)).float())


def embedding_float_ids():
    model = TextModel()
    return module_names_of(model), lambda: model(torch.randint(0, 100, (4, 10)).float())


# --- device_mismatch (what a CPU-only machine can raise for real) -----------------------------


def meta_weights_cpu_input():
    model = seq(fc=nn.Linear(4, 2, device="meta"))
    return module_names_of(model), lambda: model(torch.randn(3, 4))


class MaskedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        mask = torch.ones(x.shape[0]).cuda()  # hard-coded device
        return self.fc(x) * mask[:, None]


def cuda_in_forward_without_gpu():
    model = seq(head=MaskedHead())
    return module_names_of(model), lambda: model(torch.randn(3, 4))


# --- inplace_autograd ---------------------------------------------------------------------------


def relu_inplace_after_sigmoid():
    model = seq(enc=nn.Linear(4, 8), act=nn.Sigmoid(), clamp=nn.ReLU(inplace=True), out=nn.Linear(8, 2))
    return module_names_of(model), lambda: model(torch.randn(3, 4)).sum().backward()


class GatedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        y = torch.sigmoid(self.fc(x))
        y += 1  # in place on a tensor sigmoid saved for backward
        return y


def augmented_assign_in_forward():
    model = seq(block=GatedBlock(), out=nn.Linear(8, 1))
    return module_names_of(model), lambda: model(torch.randn(3, 4)).sum().backward()


def rnn_hidden_kept_across_batches():
    rnn = nn.RNN(4, 8, batch_first=True)
    names = module_names_of(rnn)

    def train():
        h = torch.zeros(1, 2, 8)
        for _ in range(2):
            out, h = rnn(torch.randn(2, 3, 4), h)  # h is not detached between batches
            out.sum().backward()

    return names, train


def lstm_state_carried_with_retain_graph():
    emb, lstm, head = nn.Embedding(20, 8), nn.LSTM(8, 16), nn.Linear(16, 20)
    parts = nn.ModuleDict({"emb": emb, "lstm": lstm, "head": head})
    names = module_names_of(parts)
    opt = torch.optim.SGD(parts.parameters(), lr=0.1)

    def train():
        hidden = None
        text = torch.randint(0, 20, (40,))
        for i in range(0, 30, 10):
            out, hidden = lstm(emb(text[i:i + 10]).unsqueeze(1), hidden)  # the state is not detached
            loss = F.cross_entropy(head(out.squeeze(1)), text[i + 1:i + 11])
            opt.zero_grad()
            loss.backward(retain_graph=True)
            opt.step()

    return names, train


def generator_loss_after_discriminator_step():
    gen, disc = nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    names = module_names_of(nn.ModuleDict({"gen": gen, "disc": disc}))
    opt_d = torch.optim.Adam(disc.parameters())

    def train():
        fake = gen(torch.randn(5, 4))
        real = torch.randn(5, 8)
        d_loss = F.softplus(-disc(real)).mean() + F.softplus(disc(fake.detach())).mean()
        g_loss = F.softplus(-disc(fake)).mean()
        d_loss.backward()
        opt_d.step()
        g_loss.backward()  # through disc, whose weights the step just changed

    return names, train


class ClampedGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        self.scale.clamp_(0, 1)  # in place on a parameter outside no_grad
        return x * self.scale


def parameter_clamped_in_forward():
    model = seq(gate=ClampedGate(), fc=nn.Linear(4, 2))
    return module_names_of(model), lambda: model(torch.randn(3, 4))


# --- out_of_memory (real allocations that cannot succeed on any host) -------------------------


class Pairwise(nn.Module):
    def forward(self, x):
        return (x.unsqueeze(2) - x.unsqueeze(1)).pow(2).sum(-1)  # [B, N, N, D] before the sum


def pairwise_outer_difference():
    model = seq(pair=Pairwise())
    x = torch.randn(1, 1, 64).expand(64, 2**15, 64)  # no memory of its own; the difference needs 16 TiB
    return module_names_of(model), lambda: model(x)


class LongAttention(nn.Module):
    def forward(self, q, k):
        return q @ k.transpose(-2, -1)  # [B, N, N] scores


def attention_scores_too_long():
    model = seq(attn=LongAttention())
    q = torch.randn(1, 1, 8).expand(2, 2**21, 8)  # the scores need 32 TiB
    return module_names_of(model), lambda: model.attn(q, q)


# --- nan_detected -----------------------------------------------------------------------------


class Distance(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 3)

    def forward(self, a, b):
        ea, eb = self.enc(a), self.enc(b)
        return torch.sqrt(((ea - eb) ** 2).sum(-1))  # sqrt(0) for identical pairs


def anomaly_sqrt_of_zero_distance():
    model = Distance()
    x = torch.randn(2, 4)

    def train():
        with torch.autograd.detect_anomaly(check_nan=True):
            model(x, x.clone()).mean().backward()

    return module_names_of(model), train


def clip_nonfinite_gradients():
    model = Distance()
    x = torch.randn(2, 4)

    def train():
        model(x, x.clone()).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)

    return module_names_of(model), train


class GaussianPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.mu = nn.Linear(4, 2)

    def forward(self, obs):
        # validate_args explicitly: torch.compile/export (used by other tests in the same process)
        # switches the global default off (torch._dynamo.eval_frame).
        return torch.distributions.Normal(self.mu(obs), 1.0, validate_args=True)


def policy_nan_mean():
    model = seq(policy=GaussianPolicy())
    obs = torch.randn(3, 4)
    obs[0, 0] = float("nan")
    return module_names_of(model), lambda: model(obs)


class Sampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Linear(4, 5)

    def forward(self, x):
        return torch.multinomial(torch.softmax(self.logits(x), -1), 1)


def sampling_nan_probabilities():
    model = seq(sampler=Sampler())
    x = torch.randn(3, 4)
    x[1, 2] = float("inf")
    return module_names_of(model), lambda: model(x)


# --- other: index out of range -----------------------------------------------------------------


def embedding_index_too_large():
    model = TextModel()
    ids = torch.randint(0, 100, (4, 10))
    ids[2, 3] = 120
    return module_names_of(model), lambda: model(ids)


def ce_target_out_of_range():
    model = seq(fc=nn.Linear(8, 10))
    crit = nn.CrossEntropyLoss()
    names = module_names_of(model, ("criterion.", crit))
    return names, lambda: crit(model(torch.randn(4, 8)), torch.tensor([1, 2, 12, 3]))


def ce_one_based_labels():
    model = seq(fc=nn.Linear(8, 10))
    names = module_names_of(model)
    return names, lambda: F.cross_entropy(model(torch.randn(4, 8)), torch.tensor([1, 10, 5, 3]))


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, batch):
        return self.fc(batch["pixel_values"])


def missing_batch_key():
    model = seq(body=DictModel())
    return module_names_of(model), lambda: model({"pixels": torch.randn(2, 4)})


S = Scenario
SCENARIOS = [
    # shape_mismatch
    S("linear_after_flatten", linear_after_flatten, "shape_mismatch", "classifier.0",
      ["nn.Linear(512, 10)", "[4, 2048]", "nn.Linear(2048, 10)", "flattening"]),
    S("conv_grayscale_input", conv_grayscale, "shape_mismatch", "stem",
      ["nn.Conv2d(3, 16, kernel_size=3)", "[8, 1, 28, 28]", "nn.Conv2d(1, 16, kernel_size=3)", "repeat(1, 3, 1, 1)"]),
    S("conv_channels_last", conv_channels_last, "shape_mismatch", "stem",
      ["channels-last", "permute(0, 3, 1, 2)"]),
    S("conv_flat_input", conv_flat_input, "shape_mismatch", "conv1", ["[8, 784]", "view(-1, 1, 28, 28)"]),
    S("lstm_input_size", lstm_input_size, "shape_mismatch", "rnn",
      ["nn.LSTM(32, 64, batch_first=True)", "[4, 10, 16]", "nn.LSTM(16, 64, batch_first=True)"]),
    S("lstm_4d_input", lstm_4d_input, "shape_mismatch", "rnn", ["[4, 10, 4, 8]", "flatten(2)", "input_size=32"]),
    S("attention_missing_transpose", attention_missing_transpose, "shape_mismatch", "attn",
      ["[2, 5, 8]", "k.transpose(-2, -1)"]),
    S("batchnorm_features", batchnorm_features, "shape_mismatch", "bn", ["nn.BatchNorm1d(32)", "nn.BatchNorm1d(64)"]),
    S("cross_entropy_batch_from_view", ce_batch_size_from_view, "shape_mismatch", "criterion",
      ["8 predictions for 4 targets", "x.view(x.size(0), -1)"]),
    S("bce_target_shape", bce_target_shape, "shape_mismatch", "criterion",
      ["[8, 1]", "[8]", "squeeze(1)"], contract_causes=["wrong_loss_function"]),
    S("residual_width", residual_width, "shape_mismatch", "block", ["16 and 32", "nn.Linear(32, 16)"]),
    S("skip_connection_resolution", skip_connection_resolution, "shape_mismatch", "join",
      ["along dimension 1", "size 8 where the first has 16", "`skip` [2, 4, 8, 8]", "F.interpolate"]),
    # dtype_mismatch
    S("linear_float64_from_numpy", linear_float64_numpy, "dtype_mismatch", "fc",
      ["torch.float64", "torch.float32", "x = x.float()", "torch.from_numpy(array).float()"]),
    S("conv_float64", conv_float64, "dtype_mismatch", "conv", ["torch.float64", "nn.Conv2d(3, 4, kernel_size=3)", ".float()"]),
    S("uint8_images", uint8_images, "dtype_mismatch", "fc", ["torch.uint8", ".float() / 255"]),
    S("bce_long_target", bce_long_target, "dtype_mismatch", "criterion", ["torch.int64", "target.float()"],
      contract_causes=["wrong_loss_function"]),
    S("bce_logits_long_target", bce_logits_long_target, "dtype_mismatch", "criterion",
      ["torch.int64", "target.float()"], contract_causes=["wrong_loss_function"]),
    S("cross_entropy_float_target", ce_float_target, "dtype_mismatch", "criterion",
      ["torch.float32", "torch.long in [0, 5)", "target.long()"], contract_causes=["wrong_loss_function"]),
    S("embedding_float_ids", embedding_float_ids, "dtype_mismatch", "embed", ["torch.float32", "indices.long()"]),
    # device_mismatch
    S("meta_weights_cpu_input", meta_weights_cpu_input, "device_mismatch", "fc",
      ["parameters are on meta", "is on cpu", "x.to(next(model.parameters()).device)"]),
    S("cuda_in_forward_without_gpu", cuda_in_forward_without_gpu, "device_mismatch", "head",
      ["torch.cuda.is_available()"]),
    # inplace_autograd
    S("relu_inplace_after_sigmoid", relu_inplace_after_sigmoid, "inplace_autograd", None,
      ["[3, 8]", "Sigmoid", "after `enc`", "nn.ReLU(inplace=True)", "no forward frame"], near_module="enc"),
    S("augmented_assign_in_forward", augmented_assign_in_forward, "inplace_autograd", None,
      ["[3, 8]", "Sigmoid", "after `block.fc`", "x = x + "], near_module="block.fc"),
    S("rnn_hidden_kept_across_batches", rnn_hidden_kept_across_batches, "inplace_autograd", None,
      ["retain_graph=True", ".detach()", "hidden = hidden.detach()"], contract_causes=["detached_graph"]),
    S("lstm_state_carried_with_retain_graph", lstm_state_carried_with_retain_graph, "inplace_autograd", None,
      ["`lstm.weight_ih_l0`", "[64, 8]", "optimizer.step()", "retain_graph=True", "h.detach()"],
      near_module="lstm", contract_causes=["detached_graph", "graph_kept_alive"]),
    S("generator_loss_after_discriminator_step", generator_loss_after_discriminator_step, "inplace_autograd", None,
      ["`disc.2.weight`", "[16, 1]", "before any step"], near_module="disc.2", contract_causes=["graph_kept_alive"]),
    S("parameter_clamped_in_forward", parameter_clamped_in_forward, "inplace_autograd", "gate",
      ["`scale`", "torch.no_grad()", "self.weight.clamp(0, 1)"]),
    # out_of_memory
    S("pairwise_outer_difference", pairwise_outer_difference, "out_of_memory", "pair",
      ["Out of CPU memory", "TiB", "now 64; try 32"]),
    S("attention_scores_too_long", attention_scores_too_long, "out_of_memory", "attn",
      ["Out of CPU memory", "TiB", "now 2; try 1"]),
    # nan_detected
    S("anomaly_sqrt_of_zero_distance", anomaly_sqrt_of_zero_distance, "nan_detected", None,
      ["PowBackward0", "Sqrt", "torch.sqrt(x + 1e-8)", "from the output of `enc`"], near_module="enc",
      contract_causes=["numerically_unstable_op"]),
    S("clip_nonfinite_gradients", clip_nonfinite_gradients, "nan_detected", None,
      ["non-finite", "GradScaler"], contract_causes=["numerically_unstable_op"]),
    S("policy_nan_mean", policy_nan_mean, "nan_detected", "policy", ["Normal", "`loc`", "softplus"],
      contract_causes=["numerically_unstable_op"]),
    S("sampling_nan_probabilities", sampling_nan_probabilities, "nan_detected", "sampler",
      ["NaN", "torch.multinomial(probs, 1)"], contract_causes=["numerically_unstable_op"]),
    # other (index out of range, unknown errors)
    S("embedding_index_too_large", embedding_index_too_large, "other", "embed",
      ["nn.Embedding(100, 16)", "[0, 100)", "found max 120", "nn.Embedding(121, 16)"]),
    S("cross_entropy_target_out_of_range", ce_target_out_of_range, "other", "criterion",
      ["torch.long in [0, 10)", "found max 12", "nn.Linear(in_features, 13)"], contract_causes=["label_problem"]),
    S("cross_entropy_one_based_labels", ce_one_based_labels, "other", None,
      ["[0, 10)", "found max 10", "subtract 1", "target = target - 1"], contract_causes=["label_problem"]),
    S("missing_batch_key", missing_batch_key, "other", "body", ["KeyError", "pixel_values"]),
]


def raise_scenario(s: Scenario) -> tuple[BaseException, dict[int, str]]:
    names, thunk = s.build()
    try:
        thunk()
    except BaseException as exc:  # noqa: BLE001 - the scenario's crash is the point
        return exc, names
    raise AssertionError(f"scenario {s.id} did not raise")
