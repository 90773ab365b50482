"""Healthy: delivery time in minutes (always positive, 10-70) from 16 standardised order features,
targets scaled by 1/60. An MLP whose Sequential ends with Linear(64, 1) then ReLU (predictions
cannot be negative, like the targets), MSELoss, Adam 3e-3, 5 epochs of shuffled mini-batches of 64
(plain python: MSE 0.002 by the last epoch, where the targets' variance is 0.029).

planted: kind=none cause=none
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

n = 4096
orders = torch.randn(n, 16)
weights = torch.randn(16, 1)
minutes = 40 + 10 * (orders @ weights) / weights.norm() + 2 * torch.randn(n, 1)
minutes = minutes.clamp(10, 70)
target = minutes / 60

model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1), nn.ReLU())
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(5):
    order = torch.randperm(n)
    for i in range(0, n, 64):
        batch = order[i:i + 64]
        loss = nn.functional.mse_loss(model(orders[batch]), target[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} mse {loss.item():.5f} (target variance {target.var().item():.5f})")
