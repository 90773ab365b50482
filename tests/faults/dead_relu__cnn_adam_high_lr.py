"""CNN with a ReLU hidden layer trained with Adam at lr=0.1: the first big updates push most
units of the dense ReLU layer negative for every input, and they stay dead.

planted: kind=dead_relu cause=learning_rate_too_high
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 1, 12, 12)
y = (X[:, 0, :6].mean((1, 2)) > 0).long() + 2 * (X[:, 0, :, :6].mean((1, 2)) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 6 * 6, 256)
        self.act2 = nn.ReLU()
        self.fc2 = nn.Linear(256, 4)

    def forward(self, x):
        x = self.pool(self.act1(self.conv(x))).flatten(1)
        return self.fc2(self.act2(self.fc1(x)))


model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)  # fault: ~100x Adam's usual 1e-3
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
                h = model.act2(model.fc1(model.pool(model.act1(model.conv(xb))).flatten(1)))
            print(f"step {step} loss {loss.item():.4f} dead units in fc1: {(h <= 0).all(0).float().mean():.0%}")
        step += 1
