"""Healthy: MLP with dropout and weight decay on plenty of data, evaluated on a validation set every
50 steps under torch.no_grad(): validation loss follows training loss down.

planted: kind=none cause=none
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

w = torch.randn(20, 1)
def make(n):
    x = torch.randn(n, 20)
    return x, ((x @ w).squeeze(1) + 0.5 * torch.randn(n) > 0).long()

X, y = make(8192)
X_val, y_val = make(1024)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
criterion = nn.CrossEntropyLoss()

for step in range(400):
    model.train()
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        model.eval()
        with torch.no_grad():
            val_loss = criterion(model(X_val), y_val).item()
        print(f"step {step} train {loss.item():.4f} val {val_loss:.4f}")
