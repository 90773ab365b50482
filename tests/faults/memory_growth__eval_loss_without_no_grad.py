"""MLP training loop that tracks a held-out loss every step as `val_total += criterion(model(xv), yv)`,
outside torch.no_grad() and without .item(): each evaluation's graph (with its saved activations)
is never freed, so memory grows every step.

planted: kind=memory_growth cause=graph_kept_alive
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 128)
y = (X[:, :10].sum(1) > 0).long()
X_val, y_val = X[:512], y[:512]

model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
criterion = nn.CrossEntropyLoss()

val_total = 0.0
for step in range(300):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    j = torch.randint(0, len(X_val), (128,))
    val_total += criterion(model(X_val[j]), y_val[j])  # fault: graph kept alive (no no_grad, no .item())
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.4f} mean val {val_total.item() / (step + 1):.4f}")
