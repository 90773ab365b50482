"""Regression of a daily temperature change from 16 standardised weather features: targets are a
linear function of the features (mean 0, about half negative). An MLP whose Sequential ends with
Linear(64, 1) then ReLU, MSELoss, Adam 1e-3, 5 epochs of shuffled mini-batches of 64. The ReLU head
cannot predict a fall in temperature: plain python's last batch MSE is 1.67 where the same model
without it reaches 0.01 (the targets' variance is 1.89).

planted: kind=wrong_loss_input cause=wrong_loss_function
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

n = 4096
weather = torch.randn(n, 16)
change = weather @ torch.randn(16, 1) * 0.5

model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1), nn.ReLU())
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()
for epoch in range(5):
    order = torch.randperm(n)
    for i in range(0, n, 64):
        batch = order[i:i + 64]
        loss = criterion(model(weather[batch]), change[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} mse {loss.item():.4f}")
