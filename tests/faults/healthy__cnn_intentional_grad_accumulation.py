"""Healthy: CNN with deliberate gradient accumulation over 4 micro-batches: the loss is divided by 4,
optimizer.step() and zero_grad() run every 4th batch. Not a missing zero_grad.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 1, 12, 12)
y = (X[:, 0, :6].mean((1, 2)) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 36, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
criterion = nn.CrossEntropyLoss()
accum = 4

optimizer.zero_grad()
for epoch in range(3):
    for k, (xb, yb) in enumerate(loader):
        loss = criterion(model(xb), yb) / accum
        loss.backward()
        if (k + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    print(f"epoch {epoch} loss {loss.item() * accum:.4f}")
