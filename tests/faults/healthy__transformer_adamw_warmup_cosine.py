"""Healthy: small Transformer encoder classifier, AdamW with linear warm-up then cosine decay.

planted: kind=none cause=none
"""
import math

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randint(0, 30, (2048, 12))
count = (X < 10).sum(1)  # ~ Binomial(12, 1/3)
y = (count >= 4).long() + (count >= 5).long()  # three classes of 39%, 24%, 37%


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 32)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), num_layers=2)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


model = Model()
steps = 200
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
scheduler = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
criterion = nn.CrossEntropyLoss()

for step in range(steps):
    i = torch.randint(0, len(X), (32,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    scheduler.step()
    if step % 40 == 0:
        print(f"step {step} loss {loss.item():.4f}")
