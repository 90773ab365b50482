"""Per-token tagger: random token ids (vocabulary 50) in sequences of 12, each token's tag is its id
mod 6. Embedding + GRU + linear head returning [batch, time, tags] scores; the loop takes
F.log_softmax(scores, dim=1) and F.nll_loss on the flattened tokens, Adam 3e-3, 4 epochs of a
shuffled index. The log_softmax normalizes over the time axis, not the tags: the loss is a
different objective (plain python: last batch loss 0.96 where the twin with dim=-1 reaches 0.005).

planted: kind=wrong_loss_input cause=wrong_loss_function
"""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

VOCAB, LENGTH, TAGS, N = 50, 12, 6, 2048
tokens = torch.randint(0, VOCAB, (N, LENGTH))
tags = tokens % TAGS


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.rnn = nn.GRU(32, 64, batch_first=True)
        self.out = nn.Linear(64, TAGS)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.out(h)


model = Tagger()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(4):
    order = torch.randperm(N)
    for i in range(0, N, 64):
        idx = order[i:i + 64]
        scores = model(tokens[idx])
        logp = F.log_softmax(scores, dim=1)
        loss = F.nll_loss(logp.reshape(-1, TAGS), tags[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(epoch, round(loss.item(), 4))
