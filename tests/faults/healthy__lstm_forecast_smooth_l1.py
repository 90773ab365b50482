"""Healthy: time-series forecasting: an LSTM reads a window of 24 past values of three related signals and
predicts the next value of the first one. Windows cut from a long synthetic series, DataLoader,
Adam with a StepLR schedule per epoch, Smooth L1 loss, train()/evaluate() functions.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.manual_seed(0)
torch.set_num_threads(1)

t = torch.arange(6000, dtype=torch.float32)
series = torch.stack([torch.sin(t / 7) + 0.5 * torch.sin(t / 23), torch.cos(t / 11), 0.3 * torch.sin(t / 5)], 1)
series[:, 0] += 0.05 * torch.randn(len(t))


class Windows(Dataset):
    def __init__(self, data, window=24):
        self.data, self.window = data, window

    def __len__(self):
        return len(self.data) - self.window

    def __getitem__(self, i):
        return self.data[i:i + self.window], self.data[i + self.window, 0]


class Forecaster(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(3, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.proj(out[:, -1]).squeeze(-1)


def train(model, loader, optimizer, criterion):
    model.train()
    total = 0.0
    for window, target in loader:
        optimizer.zero_grad()
        loss = criterion(model(window), target)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(loader)


@torch.no_grad()
def evaluate(model, loader, criterion):
    model.eval()
    return sum(criterion(model(w), y).item() for w, y in loader) / len(loader)


train_loader = DataLoader(Windows(series[:4000]), batch_size=64, shuffle=True)
val_loader = DataLoader(Windows(series[4000:5000]), batch_size=256)
model = Forecaster()
optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
criterion = nn.SmoothL1Loss()

for epoch in range(5):
    train_loss = train(model, train_loader, optimizer, criterion)
    val_loss = evaluate(model, val_loader, criterion)
    scheduler.step()
    print(f"epoch {epoch} train {train_loss:.5f} val {val_loss:.5f}")
