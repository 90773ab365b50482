"""Tabular regression from a DataLoader where 2% of the rows have a missing (NaN) feature that was
never imputed: the first batch that contains one makes the loss and every weight NaN.

planted: kind=data_issue cause=other
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 12)
y = X[:, :3].sum(1, keepdim=True)
X[torch.rand(2048) < 0.02, 5] = float("nan")  # fault: missing values left in the data
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()

step = 0
for epoch in range(4):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.4g}")
        step += 1
