"""Healthy: daily sales forecast from 16 store features with a three-layer MLP, trained in float16
autocast with a GradScaler and SGD with momentum, mini-batches from a DataLoader, held-out error
after each epoch.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make_split(n):
    x = torch.randn(n, 16)
    y = x[:, :4].sum(1, keepdim=True) + 0.5 * torch.sin(x[:, 4:5]) + 0.1 * torch.randn(n, 1)
    return x, y


train_x, train_y = make_split(4000)
val_x, val_y = make_split(1000)
loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
scaler = torch.amp.GradScaler("cpu")
criterion = nn.MSELoss()

for epoch in range(3):
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    model.eval()
    with torch.no_grad():
        error = criterion(model(val_x), val_y).item()
    print(f"epoch {epoch} loss {loss.item():.3f} val mse {error:.3f}")
