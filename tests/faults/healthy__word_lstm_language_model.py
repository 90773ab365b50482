"""Word-level LSTM language model in the style of the PyTorch word_language_model example: a
synthetic corpus over a 3,000-word vocabulary with Zipf-distributed word frequencies and a
bigram structure, batchified into 20 streams, truncated BPTT over 35 tokens with the hidden state
carried (and detached) between chunks. Embedding 64, one LSTM layer of 128, tied decoder, Adam at
lr 1e-2 with gradient clipping 0.5, lr divided by 4 when the validation loss stops improving.

planted: kind=none cause=none
"""
import math

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

VOCAB, EMB = 3000, 64


def make_corpus(n_tokens):
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float)
    unigram = 1.0 / ranks
    unigram /= unigram.sum()
    successor = torch.randint(0, VOCAB, (VOCAB,))
    tokens = torch.multinomial(unigram, n_tokens, replacement=True).view(-1, 2)
    follow = torch.rand(len(tokens)) < 0.7
    tokens[follow, 1] = successor[tokens[follow, 0]]
    return tokens.view(-1)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[:nbatch * bsz].view(bsz, -1).t().contiguous()


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid)
        self.proj = nn.Linear(nhid, ninp)
        self.decoder = nn.Linear(ninp, ntoken)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(self.proj(out))).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, bsz):
        w = next(self.parameters())
        return (w.new_zeros(1, bsz, self.rnn.hidden_size), w.new_zeros(1, bsz, self.rnn.hidden_size))


def repackage_hidden(h):
    return tuple(v.detach() for v in h)


corpus = make_corpus(40000)
train_data = batchify(corpus[:35000], 20)
val_data = batchify(corpus[35000:], 10)
bptt, clip, lr = 35, 0.5, 1e-2
model = RNNModel(VOCAB, EMB, 128)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=lr)


def evaluate(data):
    model.eval()
    total, hidden = 0.0, model.init_hidden(data.size(1))
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            seq_len = min(bptt, len(data) - 1 - i)
            output, hidden = model(data[i:i + seq_len], hidden)
            total += seq_len * criterion(output, data[i + 1:i + 1 + seq_len].reshape(-1)).item()
    return total / (len(data) - 1)


best_val = None
for epoch in range(4):
    model.train()
    hidden = model.init_hidden(20)
    for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
        seq_len = min(bptt, len(train_data) - 1 - i)
        data, targets = train_data[i:i + seq_len], train_data[i + 1:i + 1 + seq_len].reshape(-1)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if batch % 20 == 0:
            print(f"epoch {epoch} batch {batch} lr {lr:.4f} loss {loss.item():.3f} ppl {math.exp(loss.item()):.1f}")
    val_loss = evaluate(val_data)
    print(f"end of epoch {epoch}: valid loss {val_loss:.3f} ppl {math.exp(val_loss):.1f}")
    if best_val is None or val_loss < best_val:
        best_val = val_loss
    else:
        lr /= 4.0
        for group in optimizer.param_groups:
            group["lr"] = lr
