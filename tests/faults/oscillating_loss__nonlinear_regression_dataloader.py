"""Nonlinear regression (sin and product terms) with a 3-layer MLP from a DataLoader, trained with
SGD at lr=0.15: the loss spikes back toward its starting value again and again.

planted: kind=oscillating_loss cause=learning_rate_too_high
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 6)
y = torch.sin(X[:, :1]) * 2 + X[:, 1:2] * X[:, 2:3] + X[:, 3:4]
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)

model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.15)  # fault: about 10x too high
criterion = nn.MSELoss()

step = 0
for epoch in range(5):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % 40 == 0:
            print(f"step {step} loss {loss.item():.4g}")
        step += 1
