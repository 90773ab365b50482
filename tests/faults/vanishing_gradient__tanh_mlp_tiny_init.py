"""Tanh MLP (autoencoder-style bottleneck) initialized with N(0, 1e-3): the forward signal and the
backward gradient shrink ~100x per layer, so nothing learns. Trained with Adam from a DataLoader.

planted: kind=vanishing_gradient cause=bad_weight_init
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 32)
y = (X[:, :3].sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

model = nn.Sequential(
    nn.Linear(32, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 16), nn.Tanh(),
    nn.Linear(16, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 2),
)
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=1e-3)  # fault: ~100x below the Xavier scale
        nn.init.zeros_(m.bias)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()

step = 0
for epoch in range(8):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} first-layer grad {model[0].weight.grad.norm().item():.2e}")
        optimizer.step()
        step += 1
