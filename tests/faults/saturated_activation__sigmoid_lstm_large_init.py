"""Sequence classifier: an LSTM encoder followed by a sigmoid MLP head whose weights were initialized
with N(0, 10) (~80x 1/sqrt(fan_in)): the head's sigmoid layer sits at 0/1 for half or more of its
outputs.

A symptom without harm, measured: with Adam the LSTM still learns (held-out accuracy 0.93-0.97 over
4 seeds, as with the default init; frozen LSTM: 0.61), the layers before the sigmoid move as fast as
those after it (update ratios 9.3e-3 vs 1.4e-2; default init 9.6e-3 vs 1.5e-2), and the loss falls
0.65 -> 0.14 (default init 0.70 -> 0.12). The right report is the saturation and the init scale as
low hints, not an alarm.

planted: kind=saturated_activation cause=bad_weight_init
expected: low
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(1024, 20, 8)
y = (X[:, :, 0].sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 64, batch_first=True)
        self.hidden = nn.Linear(64, 128)
        self.act = nn.Sigmoid()
        self.out = nn.Linear(128, 2)
        nn.init.normal_(self.hidden.weight, std=10.0)
        nn.init.normal_(self.hidden.bias, std=1.0)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.out(self.act(self.hidden(h[-1])))


model = Classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

step = 0
for epoch in range(4):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % 40 == 0:
            with torch.no_grad():
                _, (h, _) = model.lstm(xb)
                s = model.act(model.hidden(h[-1]))
            print(f"step {step} loss {loss.item():.4f} saturated: {((s < 0.01) | (s > 0.99)).float().mean():.0%}")
        step += 1
