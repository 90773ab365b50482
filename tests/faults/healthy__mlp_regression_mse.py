"""Healthy: house-price style regression on 12 standardised tabular features: a three-layer MLP with one
output unit, trained with SGD + momentum on mini-batches drawn by hand, validation every 100 steps.

planted: kind=none cause=none
"""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

coef = torch.randn(12)
features = torch.randn(5000, 12)
prices = features @ coef + 0.5 * torch.sin(3 * features[:, 0]) + 0.1 * torch.randn(5000)
x_train, y_train = features[:4000], prices[:4000]
x_val, y_val = features[4000:], prices[4000:]

model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

for step in range(1500):
    batch = torch.randint(0, len(x_train), (64,))
    pred = model(x_train[batch]).squeeze(1)
    loss = F.mse_loss(pred, y_train[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 100 == 0:
        with torch.no_grad():
            val_loss = F.mse_loss(model(x_val).squeeze(1), y_val).item()
        print(f"step {step} loss {loss.item():.4f} val {val_loss:.4f}")
