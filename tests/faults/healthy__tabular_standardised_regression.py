"""Healthy: regression on tabular property records: 8 numeric columns (floor area, lot size, year
built, assessed value in thousands, distances, ...) standardised with the training set's mean and
standard deviation, target the yearly maintenance cost in thousands. MLP with two hidden layers,
Adam, DataLoader, a held-out validation set checked every epoch.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def property_records(n):
    area = 60 + 140 * torch.rand(n)
    lot = 200 + 1800 * torch.rand(n)
    year = 1900 + 120 * torch.rand(n)
    value = 80 + 2.5 * area + 30 * torch.randn(n)
    dist_centre = 500 + 20_000 * torch.rand(n)
    dist_coast = 1_000 + 60_000 * torch.rand(n)
    rooms = torch.randint(1, 8, (n,)).float()
    income = 25_000 + 40_000 * torch.rand(n)
    x = torch.stack([area, lot, year, value, dist_centre, dist_coast, rooms, income], 1)
    cost = (0.8 * (area - 130) / 40 + 0.6 * (2020 - year) / 35 - 0.4 * (dist_coast - 31_000) / 17_000
            + 0.3 * torch.sin(rooms) + 0.3 * torch.randn(n))
    return x, cost.unsqueeze(1)


x_train, y_train = property_records(4000)
x_val, y_val = property_records(1000)
mean, std = x_train.mean(0), x_train.std(0)
x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()

for epoch in range(10):
    model.train()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
    model.eval()
    with torch.no_grad():
        val_loss = criterion(model(x_val), y_val).item()
    print(f"epoch {epoch} train mse {total / len(x_train):.4f} val mse {val_loss:.4f}")
