"""1-d CNN that classifies short vibration signals (64 samples) into four machine states by their
dominant frequency; the labels come from field annotations, about a fifth of them wrong. A small
DataModule-style class builds the train and validation loaders from one 800-signal dataset with an
80/20 random_split; RMSprop, ReduceLROnPlateau on the validation loss.

planted: kind=validation_overlap cause=data_leakage
"""
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

torch.manual_seed(0)
torch.set_num_threads(1)


def make_signals(n, length=64):
    state = torch.randint(0, 4, (n,))
    t = torch.arange(length) / length
    freq = (2 + 3 * state).float().unsqueeze(1)
    phase = 2 * math.pi * torch.rand(n, 1)
    x = torch.sin(2 * math.pi * freq * t + phase) + 1.0 * torch.randn(n, length)
    noisy = torch.rand(n) < 0.2
    labels = torch.where(noisy, torch.randint(0, 4, (n,)), state)
    return x.unsqueeze(1), labels


class SignalData:
    def __init__(self, n=800, val_fraction=0.2, batch_size=32):
        self.dataset = TensorDataset(*make_signals(n))
        self.n_val = int(n * val_fraction)
        self.batch_size = batch_size

    def _split(self):
        return random_split(self.dataset, [len(self.dataset) - self.n_val, self.n_val])

    def train_dataloader(self):
        train_set, _ = self._split()
        return DataLoader(train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        _, val_set = self._split()
        return DataLoader(val_set, batch_size=80)


model = nn.Sequential(
    nn.Conv1d(1, 32, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
    nn.Conv1d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
    nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 4),
)
data = SignalData()
train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
criterion = nn.CrossEntropyLoss()

for epoch in range(25):
    model.train()
    total = 0.0
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(xb)
    model.eval()
    val_loss, correct = 0.0, 0
    with torch.no_grad():
        for xb, yb in val_loader:
            logits = model(xb)
            val_loss += criterion(logits, yb).item() * len(xb)
            correct += (logits.argmax(1) == yb).sum().item()
    val_loss /= data.n_val
    scheduler.step(val_loss)
    if epoch % 4 == 0 or epoch == 24:
        print(f"epoch {epoch} train {total / (len(data.dataset) - data.n_val):.4f} val {val_loss:.4f} "
              f"val acc {correct / data.n_val:.3f}")
