"""Sequence classifier: an embedding, an LSTM encoder and a linear head, trained from main()."""

import torch
from torch import nn

VOCAB, EMBED, HIDDEN = 500, 32, 64


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBED)
        self.rnn = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)

    def forward(self, tokens):
        out, _ = self.rnn(self.embedding(tokens))
        return out[:, -1]


class SentimentModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, tokens):
        return self.head(self.encoder(tokens))


def main():
    torch.manual_seed(0)
    net = SentimentModel()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tokens, labels = torch.randint(0, VOCAB, (128, 20)), torch.randint(0, 2, (128,))
    for step in range(20):
        batch = slice(step % 4 * 32, step % 4 * 32 + 32)
        loss = nn.functional.cross_entropy(net(tokens[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
