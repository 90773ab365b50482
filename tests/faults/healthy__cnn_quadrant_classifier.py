"""Healthy: small CNN that classifies 16x16 single-channel images into four classes (which
quadrant is brightest). Two conv blocks with max pooling, then a linear classifier head. Adam,
DataLoader with shuffling, a validation pass after every epoch.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make_images(n):
    x = torch.randn(n, 1, 16, 16)
    quadrants = torch.stack([x[:, 0, :8, :8].mean((1, 2)), x[:, 0, :8, 8:].mean((1, 2)),
                             x[:, 0, 8:, :8].mean((1, 2)), x[:, 0, 8:, 8:].mean((1, 2))], 1)
    return x, quadrants.argmax(1)


class QuadrantNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


train_x, train_y = make_images(2048)
val_x, val_y = make_images(512)
train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)
val_loader = DataLoader(TensorDataset(val_x, val_y), batch_size=256)

model = QuadrantNet()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
criterion = nn.CrossEntropyLoss()

for epoch in range(8):
    model.train()
    total = 0.0
    for images, labels in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(images)
    model.eval()
    correct, val_loss = 0, 0.0
    with torch.no_grad():
        for images, labels in val_loader:
            out = model(images)
            val_loss += criterion(out, labels).item() * len(images)
            correct += (out.argmax(1) == labels).sum().item()
    print(f"epoch {epoch} train loss {total / len(train_x):.4f} "
          f"val loss {val_loss / len(val_x):.4f} val acc {correct / len(val_x):.3f}")
