"""Healthy: 1D CNN that classifies vibration-like signals (128 samples, 2 channels) into 5 fault classes by
their dominant frequency. The dataset is shuffled and split 80/20 into train and validation;
Adam, manual batching, a validation pass after every epoch.

planted: kind=none cause=none
"""
import math

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

N, LENGTH, CLASSES = 3000, 128, 5
labels = torch.randint(0, CLASSES, (N,))
t = torch.arange(LENGTH, dtype=torch.float32)
freq = (2 + 3 * labels.float()).unsqueeze(1)
base = torch.sin(2 * math.pi * freq * t / LENGTH + 6.28 * torch.rand(N, 1))
signals = torch.stack([base, 0.5 * base.roll(3, 1)], 1) + 0.8 * torch.randn(N, 2, LENGTH)

perm = torch.randperm(N)
n_train = int(0.8 * N)
train_x, train_y = signals[perm[:n_train]], labels[perm[:n_train]]
val_x, val_y = signals[perm[n_train:]], labels[perm[n_train:]]

model = nn.Sequential(
    nn.Conv1d(2, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(4),
    nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.AdaptiveMaxPool1d(1),
    nn.Flatten(), nn.Linear(32, CLASSES),
)
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
criterion = nn.CrossEntropyLoss()
batch_size = 64

for epoch in range(6):
    model.train()
    order = torch.randperm(n_train)
    losses = []
    for i in range(0, n_train, batch_size):
        idx = order[i:i + batch_size]
        optimizer.zero_grad()
        loss = criterion(model(train_x[idx]), train_y[idx])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(val_x)
    acc = (logits.argmax(1) == val_y).float().mean().item()
    print(f"epoch {epoch} train {sum(losses) / len(losses):.4f} "
          f"val {criterion(logits, val_y).item():.4f} acc {acc:.3f}")
