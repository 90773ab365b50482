"""MLP regression trained with plain SGD at lr=0.5: the updates overshoot and the gradients blow up.

planted: kind=exploding_gradient cause=learning_rate_too_high
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 16)
y = X @ torch.randn(16, 1) * 3 + 0.1 * torch.randn(2048, 1)

model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # fault: far too high for this problem
criterion = nn.MSELoss()

for step in range(200):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    optimizer.step()
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.4g} grad_norm {gn.item():.4g}")
