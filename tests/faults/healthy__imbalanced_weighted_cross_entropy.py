"""Fraud-style imbalanced classification: 3 classes at 90% / 8% / 2% of 8000 rows with 10
standardised features, an MLP, CrossEntropyLoss with inverse-frequency class weights computed
from the training labels, a WeightedRandomSampler-free DataLoader, Adam 1e-3, 8 epochs; per-class
recall on a validation split.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)
N = 8000
y = torch.multinomial(torch.tensor([0.90, 0.08, 0.02]), N, replacement=True)
centers = torch.randn(3, 10) * 1.2
X = centers[y] + torch.randn(N, 10)
X = (X - X.mean(0)) / X.std(0)
split = int(0.8 * N)
counts = torch.bincount(y[:split], minlength=3).float()
weights = counts.sum() / (3 * counts)
train_loader = DataLoader(TensorDataset(X[:split], y[:split]), batch_size=128, shuffle=True)

model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
criterion = nn.CrossEntropyLoss(weight=weights)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(8):
    model.train()
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pred = model(X[split:]).argmax(1)
        truth = y[split:]
        recall = [((pred == c) & (truth == c)).sum().item() / max((truth == c).sum().item(), 1) for c in range(3)]
    print(f"epoch {epoch} loss {loss.item():.3f} recall {[round(r, 3) for r in recall]}")
