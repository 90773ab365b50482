"""House-price style regression with an MLP; SGD with momentum and a linear warm-up whose peak
learning rate is far too high. Training goes well until the warm-up passes the largest stable
step size, then every update overshoots further until the loss overflows.

planted: kind=nan_or_inf cause=learning_rate_too_high
starts: 780
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

n = 4096
X = torch.randn(n, 16)
w = torch.randn(16, 1)
y = X @ w + 0.5 * torch.sin(X[:, :1] * 2) + 0.1 * torch.randn(n, 1)
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
warmup = 2000
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
criterion = nn.MSELoss()

step = 0
for epoch in range(20):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 25 == 0:
            print(f"step {step} lr {scheduler.get_last_lr()[0]:.4f} loss {loss.item():.4g}")
        step += 1
