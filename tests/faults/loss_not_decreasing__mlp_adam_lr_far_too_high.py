"""Tabular classifier (20 features, 5 classes decided by a few of them): a three-layer ReLU MLP
trained with Adam on mini-batches from a DataLoader, validation accuracy after every epoch.

planted: kind=loss_not_decreasing cause=learning_rate_too_high
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make_split(n):
    x = torch.randn(n, 20)
    y = (x[:, :5] + 0.2 * torch.randn(n, 5)).argmax(1)
    return x, y


train_x, train_y = make_split(4000)
val_x, val_y = make_split(1000)
loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 5))
optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
criterion = nn.CrossEntropyLoss()

for epoch in range(5):
    model.train()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item()
    model.eval()
    with torch.no_grad():
        logits = model(val_x)
        val_loss = criterion(logits, val_y).item()
        acc = (logits.argmax(1) == val_y).float().mean().item()
    print(f"epoch {epoch} train {total / len(loader):.4f} val {val_loss:.4f} acc {acc:.3f}")
