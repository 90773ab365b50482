"""Healthy: tabular classifier (3000 training rows, 60 features, 3 classes): a six-block MLP, each block
Linear -> BatchNorm -> ReLU -> Dropout, SGD with momentum, DataLoader. Each epoch trains, then
reports the validation loss and accuracy through an evaluate() helper.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

mixing = torch.randn(60, 3)


def make_split(n):
    x = torch.randn(n, 60)
    logits = x @ mixing + 0.8 * torch.randn(n, 3)
    return x, logits.argmax(1)


def block(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), nn.Dropout(0.5))


x_train, y_train = make_split(3000)
x_val, y_val = make_split(2000)
train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True)

model = nn.Sequential(block(60, 128), *[block(128, 128) for _ in range(5)], nn.Linear(128, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()


def evaluate():
    model.eval()
    with torch.no_grad():
        logits = model(x_val)
    return criterion(logits, y_val).item(), (logits.argmax(1) == y_val).float().mean().item()


for epoch in range(12):
    model.train()
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    val_loss, val_acc = evaluate()
    print(f"epoch {epoch} train loss {loss.item():.4f} val loss {val_loss:.4f} val acc {val_acc:.3f}")
