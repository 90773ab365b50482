"""Character-level language model: a two-layer pre-norm causal transformer encoder (64 wide,
4 heads, learned positions starting at zero), AdamW with a linear warm-up into a cosine decay,
gradient clipping at 1, evaluated on held-out sentences every 100 steps.

planted: kind=none cause=none
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(1)
torch.set_num_threads(1)

words = "the a quick brown lazy fox dog cat jumps runs sleeps over under near home back then and".split()
sentences = [" ".join(words[j] for j in torch.randint(0, len(words), (8,)).tolist()) + ". " for _ in range(400)]
vocab = sorted(set("".join(sentences)))
stoi = {c: i for i, c in enumerate(vocab)}
train_ids = torch.tensor([stoi[c] for c in "".join(sentences[:340])])
val_ids = torch.tensor([stoi[c] for c in "".join(sentences[340:])])
ctx, batch_size, total_steps, warmup = 32, 16, 300, 30


class CharTransformer(nn.Module):
    def __init__(self, vocab_size, d=64):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        layer = nn.TransformerEncoderLayer(d, 4, 128, dropout=0.1, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, idx):
        T = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        h = self.enc(self.tok(idx) + self.pos[:T], mask=mask, is_causal=True)
        return self.head(self.ln(h))


def get_batch(ids):
    ix = torch.randint(0, len(ids) - ctx - 1, (batch_size,))
    return torch.stack([ids[i:i + ctx] for i in ix]), torch.stack([ids[i + 1:i + ctx + 1] for i in ix])


def lr_lambda(s):
    return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))


model = CharTransformer(len(vocab))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

for step in range(total_steps):
    x, y = get_batch(train_ids)
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    if step % 100 == 99:
        model.eval()
        with torch.no_grad():
            vx, vy = get_batch(val_ids)
            val_loss = F.cross_entropy(model(vx).flatten(0, 1), vy.flatten())
        model.train()
        print(step, round(loss.item(), 3), round(val_loss.item(), 3))
