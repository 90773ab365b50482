"""Linear-target regression with a small MLP, trained with plain SGD at lr=0.2 (manual batching):
just below divergence, each step overshoots the valley and the loss keeps jumping back up to
where it started instead of settling.

planted: kind=oscillating_loss cause=learning_rate_too_high
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 8)
y = X @ torch.randn(8, 1) + 0.1 * torch.randn(4096, 1)

model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)  # fault: ~10x too high for this problem
criterion = nn.MSELoss()

for step in range(300):
    i = torch.randint(0, len(X), (32,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 25 == 0:
        print(f"step {step} loss {loss.item():.4g}")
