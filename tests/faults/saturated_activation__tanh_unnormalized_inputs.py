"""Tanh network fed raw sensor readings in the hundreds (never standardized): the first tanh layer
sits at +-1 for almost every input, where its gradient is zero.

planted: kind=saturated_activation cause=unnormalized_inputs
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

raw = torch.randn(4096, 8) * 150 + 400  # fault: raw units, mean ~400, std ~150, fed as-is
y = ((raw[:, 0] - 400) * (raw[:, 1] - 400) > 0).long()

model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
criterion = nn.CrossEntropyLoss()

for step in range(300):
    i = torch.randint(0, len(raw), (64,))
    optimizer.zero_grad()
    h = model[:2](raw[i])
    loss = criterion(model[2:](h), y[i])
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.4f} saturated: {(h.abs() > 0.99).float().mean():.0%}")
