"""Dense autoencoder that compresses 32-dimensional sensor vectors (generated from 4 latent factors
plus noise) through an 8-unit bottleneck. SGD with Nesterov momentum and L2 regularisation,
DataLoader with shuffling, reconstruction error on a held-out split every epoch.

planted: kind=weight_decay_too_high cause=weight_decay_too_high
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

mixing = torch.randn(4, 32)


def make_vectors(n):
    factors = torch.randn(n, 4)
    return torch.tanh(factors @ mixing) + 0.05 * torch.randn(n, 32)


model = nn.Sequential(
    nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8),
    nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32),
)
train_set = make_vectors(4096)
holdout = make_vectors(512)
loader = DataLoader(TensorDataset(train_set), batch_size=128, shuffle=True)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.5)
criterion = nn.MSELoss()

for epoch in range(10):
    model.train()
    total = 0.0
    for (batch,) in loader:
        optimizer.zero_grad()
        loss = criterion(model(batch), batch)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    model.eval()
    with torch.no_grad():
        holdout_loss = criterion(model(holdout), holdout).item()
    print(f"epoch {epoch} train {total / len(train_set):.4f} holdout {holdout_loss:.4f}")
