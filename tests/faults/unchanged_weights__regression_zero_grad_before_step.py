"""Tabular regression (house-price style: 8 standardised features, a noisy linear-plus-interaction
target): a two-hidden-layer MLP trained with SGD and momentum on a shuffled DataLoader, the
gradients cleared right before each optimizer step.

planted: kind=unchanged_weights cause=zero_grad_misplaced
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(3)
torch.set_num_threads(1)

n = 2000
features = torch.randn(n, 8)
price = features @ torch.randn(8) + 0.5 * features[:, 0] * features[:, 1] + 0.1 * torch.randn(n)
loader = DataLoader(TensorDataset(features, price), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
criterion = nn.MSELoss()

for epoch in range(6):
    running = 0.0
    for x, y in loader:
        pred = model(x).squeeze(-1)
        loss = criterion(pred, y)
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
        running += loss.item()
    print(f"epoch {epoch}: mse {running / len(loader):.3f}")
