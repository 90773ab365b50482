"""CNN trained on 96 images for 40 epochs from a DataLoader, evaluated on a held-out loader after
every epoch: it memorizes the training set and the validation loss climbs.

planted: kind=overfitting cause=model_too_large_for_data
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

def make(n):
    x = torch.randn(n, 1, 10, 10)
    signal = x[:, 0, :5].mean((1, 2)) - x[:, 0, 5:].mean((1, 2))
    return x, (signal + 0.3 * torch.randn(n) > 0).long()

train = DataLoader(TensorDataset(*make(96)), batch_size=16, shuffle=True)
val = DataLoader(TensorDataset(*make(256)), batch_size=128)
model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 100, 256), nn.ReLU(),
                      nn.Linear(256, 2))  # fault: ~800k parameters for 96 samples, no regularization
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for epoch in range(40):
    model.train()
    for xb, yb in train:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_loss = sum(criterion(model(xb), yb).item() * len(xb) for xb, yb in val) / 256
    if epoch % 4 == 0:
        print(f"epoch {epoch} train {loss.item():.4f} val {val_loss:.4f}")
