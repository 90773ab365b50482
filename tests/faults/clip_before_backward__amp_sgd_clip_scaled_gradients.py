"""Tabular classifier (24 features, 6 classes) with a three-layer MLP, trained in float16 autocast
with a GradScaler, SGD with momentum and gradient-norm clipping at 1.0, mini-batches from a
DataLoader, held-out accuracy after each epoch.

planted: kind=clip_before_backward cause=clipping_misplaced
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make_split(n):
    x = torch.randn(n, 24)
    y = (x[:, :6] + 0.3 * torch.randn(n, 6)).argmax(1)
    return x, y


train_x, train_y = make_split(4000)
val_x, val_y = make_split(1000)
loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(24, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 6))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scaler = torch.amp.GradScaler("cpu")
criterion = nn.CrossEntropyLoss()

for epoch in range(3):
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
    print(f"epoch {epoch} loss {loss.item():.3f} val accuracy {accuracy:.3f}")
