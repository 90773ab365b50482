"""Sensor-window classifier (16 readings, 4 classes): an MLP encoder and a linear head, compiled
in place with model.compile(), trained end to end with AdamW on random mini-batches.

planted: kind=none cause=none
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.encoder(x))


X = torch.randn(4096, 16)
w = torch.randn(16, 4)
y = (torch.sin(X) @ w + 0.1 * torch.randn(4096, 4)).argmax(1)

model = Classifier()
model.compile(backend="eager")
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
criterion = nn.CrossEntropyLoss()

for step in range(200):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 40 == 0:
        print(f"step {step} loss {loss.item():.4f}")
