"""ReLU MLP whose hidden biases are initialized to -3 (a copy-paste of a 'gate bias' trick): most
hidden units are negative on every input from the first step, never fire, and never recover.

planted: kind=dead_relu cause=bad_weight_init
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 20)
y = (X[:, :5].sum(1) > 0).long() + (X[:, 5] > 1).long()

model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3))
for m in (model[0], model[2]):
    nn.init.constant_(m.bias, -3.0)  # fault: pushes nearly every pre-activation below zero
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
criterion = nn.CrossEntropyLoss()

for step in range(300):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    out = model[:2](X[i])
    loss = criterion(model[2:](out), y[i])
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        dead = (out <= 0).all(0).float().mean().item()
        print(f"step {step} loss {loss.item():.4f} dead units in layer 1: {dead:.0%}")
