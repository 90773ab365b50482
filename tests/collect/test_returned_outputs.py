"""ReturnedOutputs: modules whose output an enclosing module returns next to others, from one
sampled training step (collect/flow.py)."""

import pickle

import torch
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch
from modeldebug.events import ReturnedOutputs


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.pooler = nn.Sequential(nn.Linear(8, 8), nn.Tanh())

    def forward(self, x):
        seq = self.body(x)
        return seq, self.pooler(seq)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        seq, _ = self.backbone(x)  # the pooled output is not used
        return self.head(seq)


def _train(model, store_path, steps=4, detach=False):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, config=md.DebuggingConfig(every=2, store_path=store_path)) as dbg:
        for _ in range(steps):
            x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                model(x)  # evaluation passes are not recorded
    return dbg.evidence()


def test_a_pooled_output_returned_beside_the_used_one_is_listed(store_path):
    torch.manual_seed(0)
    ev = _train(Tagger(), store_path)
    (event,) = ev.events_of(ReturnedOutputs)
    assert {"backbone.pooler", "backbone.pooler.1", "backbone.body", "backbone.body.1"} <= set(event.modules)
    assert not {"head", "backbone.pooler.0", "backbone"} & set(event.modules)


def test_a_model_returning_one_tensor_lists_nothing(store_path):
    torch.manual_seed(0)
    ev = _train(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), store_path)
    assert ev.events_of(ReturnedOutputs) == []


def test_a_watched_model_pickles_without_our_callbacks_mid_step(store_path):
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)):
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
            copy = pickle.loads(pickle.dumps(model))  # the step's hooks are still installed
            opt.step()
    assert copy(torch.randn(2, 6)).shape == (2, 3)
