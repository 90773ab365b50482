"""GRU encoder-decoder (the PyTorch seq2seq tutorial's shape, no attention) that learns to reverse
sequences of digits 3-9 of length 4-8: SOS/EOS/PAD tokens, teacher forcing on half the batches,
NLLLoss over log_softmax outputs with ignore_index on padding, SGD momentum 0.9 lr 0.05, gradient
clipping, greedy decoding accuracy at the end of each epoch.

planted: kind=none cause=none
"""
import random

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)
PAD, SOS, EOS, VOCAB, MAX_LEN, HIDDEN = 0, 1, 2, 10, 8, 64


def batch(n):
    lens = [random.randint(4, MAX_LEN) for _ in range(n)]
    src = torch.full((n, MAX_LEN + 1), PAD)
    tgt = torch.full((n, MAX_LEN + 1), PAD)
    for i, L in enumerate(lens):
        seq = [random.randint(3, VOCAB - 1) for _ in range(L)]
        src[i, :L + 1] = torch.tensor(seq + [EOS])
        tgt[i, :L + 1] = torch.tensor(seq[::-1] + [EOS])
    return src, tgt


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, HIDDEN, padding_idx=PAD)
        self.gru = nn.GRU(HIDDEN, HIDDEN, batch_first=True)

    def forward(self, src):
        _, hidden = self.gru(self.embedding(src))
        return hidden


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, HIDDEN)
        self.gru = nn.GRU(HIDDEN, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def forward(self, token, hidden):
        output, hidden = self.gru(F.relu(self.embedding(token)), hidden)
        return F.log_softmax(self.out(output.squeeze(1)), dim=-1), hidden


encoder, decoder = Encoder(), Decoder()
params = list(encoder.parameters()) + list(decoder.parameters())
optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
criterion = nn.NLLLoss(ignore_index=PAD)


def run(src, tgt, teacher_forcing):
    hidden = encoder(src)
    token = torch.full((src.size(0), 1), SOS)
    outputs = []
    for t in range(tgt.size(1)):
        log_probs, hidden = decoder(token, hidden)
        outputs.append(log_probs)
        token = tgt[:, t:t + 1] if teacher_forcing else log_probs.argmax(-1, keepdim=True)
    return torch.stack(outputs, dim=1)


for epoch in range(6):
    for it in range(60):
        src, tgt = batch(32)
        out = run(src, tgt, teacher_forcing=random.random() < 0.5)
        loss = criterion(out.reshape(-1, VOCAB), tgt.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    with torch.no_grad():
        src, tgt = batch(200)
        pred = run(src, tgt, teacher_forcing=False).argmax(-1)
        mask = tgt != PAD
        acc = ((pred == tgt) & mask).sum().item() / mask.sum().item()
    print(f"epoch {epoch} loss {loss.item():.3f} token acc {acc:.3f}")
