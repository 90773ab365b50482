"""Character-level language model: a two-layer causal transformer encoder (64 wide, 4 heads,
learned positions starting at zero) over a small corpus of sentences, Adam, random 32-character
windows.

planted: kind=loss_not_decreasing cause=learning_rate_too_high
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(1)
torch.set_num_threads(1)

text = "the quick brown fox jumps over the lazy dog and then runs back home to sleep " * 40
vocab = sorted(set(text))
stoi = {c: i for i, c in enumerate(vocab)}
data = torch.tensor([stoi[c] for c in text])
ctx, batch_size = 32, 16


class CharTransformer(nn.Module):
    def __init__(self, vocab_size, d=64):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        layer = nn.TransformerEncoderLayer(d, 4, 128, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, idx):
        T = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return self.head(self.enc(self.tok(idx) + self.pos[:T], mask=mask, is_causal=True))


model = CharTransformer(len(vocab))
opt = torch.optim.Adam(model.parameters(), lr=0.3)

for step in range(300):
    ix = torch.randint(0, len(data) - ctx - 1, (batch_size,))
    x = torch.stack([data[i:i + ctx] for i in ix])
    y = torch.stack([data[i + 1:i + ctx + 1] for i in ix])
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        print(step, loss.item())
