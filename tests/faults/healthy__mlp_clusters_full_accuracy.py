"""MLP classifier for six well-separated Gaussian clusters in 10 dimensions (a clean, easy
problem). Adam with an exponential lr decay, DataLoader with shuffling, test accuracy after every
epoch; the training loss falls smoothly towards zero and the test accuracy reaches 100%.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

centers = torch.randn(6, 10) * 4


def make_points(n):
    labels = torch.randint(0, 6, (n,))
    return centers[labels] + torch.randn(n, 10), labels


train_x, train_y = make_points(3000)
test_x, test_y = make_points(1000)
loader = DataLoader(TensorDataset(train_x, train_y), batch_size=100, shuffle=True)
model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 6))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
criterion = nn.CrossEntropyLoss()

for epoch in range(15):
    model.train()
    total = 0.0
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(xb)
    scheduler.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"epoch {epoch} train loss {total / len(train_x):.5f} test acc {acc:.4f}")
