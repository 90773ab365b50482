"""Ten sigmoid hidden layers: each multiplies the backward signal by at most 0.25, so the first
layers get almost no gradient and the loss stays at chance.

planted: kind=vanishing_gradient cause=saturating_activation_choice
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 20)
y = (X[:, 0] * X[:, 1] > 0).long() + 2 * (X[:, 2] > 0).long()

layers = [nn.Linear(20, 64), nn.Sigmoid()]
for _ in range(9):
    layers += [nn.Linear(64, 64), nn.Sigmoid()]  # fault: deep stack of sigmoids, no normalization
layers += [nn.Linear(64, 4)]
model = nn.Sequential(*layers)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
criterion = nn.CrossEntropyLoss()

for step in range(300):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    if step % 50 == 0:
        first, last = model[0].weight.grad.norm().item(), model[-1].weight.grad.norm().item()
        print(f"step {step} loss {loss.item():.4f} first/last grad norm {first:.2e}/{last:.2e}")
    optimizer.step()
