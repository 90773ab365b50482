"""LSTM forecaster: reads 40 steps of a noisy multi-sine series and predicts the next value. Two
stacked LSTM layers, plain SGD at a high learning rate with gradient-norm clipping at 0.5 (the
usual recipe for recurrent nets), manual batching over random windows, a validation MSE every 50
steps.

planted: kind=none cause=none
"""
import math

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

t = torch.arange(6000, dtype=torch.float32)
series = torch.sin(2 * math.pi * t / 50) + 0.5 * torch.sin(2 * math.pi * t / 13) + 0.1 * torch.randn(len(t))
WINDOW = 40


def windows(start, stop, n):
    begin = torch.randint(start, stop - WINDOW - 1, (n,))
    idx = begin.unsqueeze(1) + torch.arange(WINDOW + 1)
    chunk = series[idx]
    return chunk[:, :WINDOW].unsqueeze(-1), chunk[:, WINDOW:]


class Forecaster(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=2, batch_first=True)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.proj(out[:, -1])


model = Forecaster()
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
criterion = nn.MSELoss()
val_x, val_y = windows(5000, 6000, 256)

for step in range(300):
    model.train()
    x, y = windows(0, 5000, 32)
    pred = model(x)
    loss = criterion(pred, y)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
    optimizer.step()
    if step % 50 == 0 or step == 299:
        model.eval()
        with torch.no_grad():
            val_loss = criterion(model(val_x), val_y).item()
        print(f"step {step} train {loss.item():.4f} val {val_loss:.4f}")
