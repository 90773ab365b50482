"""MLP with every weight initialized to zero ("start from a clean slate"): all hidden units compute
the same value and get the same gradient, so the network behaves like a single unit and the loss stalls.

planted: kind=poor_weight_init cause=bad_weight_init
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 20)
y = (X[:, 0] * X[:, 1] > 0).long()

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
for p in model.parameters():
    nn.init.zeros_(p)  # fault: symmetric (zero) init of every weight
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()

for step in range(300):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.4f} distinct hidden weights: {model[0].weight.unique().numel()}")
