"""Autoencoder training loop that computes the loss and calls backward() but never optimizer.step():
the weights never move and the reconstruction loss stays where it started.

planted: kind=unchanged_weights cause=missing_optimizer_step
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 32) @ torch.randn(32, 32) * 0.3
loader = DataLoader(TensorDataset(X), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(),
                      nn.Linear(16, 32))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()

step = 0
for epoch in range(5):
    for (xb,) in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), xb)
        loss.backward()
        # fault: optimizer.step() is missing
        step += 1
    print(f"epoch {epoch} loss {loss.item():.4f}")
