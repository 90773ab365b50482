"""Small CNN for 3-class classification of 12x12 two-channel patches (which channel pattern
dominates). The convolutional trunk is defined in __init__, the linear head is sized in forward
from the flattened feature map. SGD with momentum and a StepLR schedule, DataLoader with shuffling,
a validation pass after every epoch.

planted: kind=untracked_parameters cause=parameters_not_in_optimizer
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make_patches(n):
    x = torch.randn(n, 2, 12, 12)
    score = torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), (x[:, 0] * x[:, 1]).mean((1, 2))], 1)
    return x, score.argmax(1)


class PatchNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.classes = classes
        self.trunk = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = None

    def forward(self, x):
        feats = self.trunk(x).flatten(1)
        self.head = nn.Linear(feats.shape[1], self.classes)
        return self.head(feats)


train_x, train_y = make_patches(2048)
val_x, val_y = make_patches(512)
train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)

model = PatchNet()
model(train_x[:2])
optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
criterion = nn.CrossEntropyLoss()

for epoch in range(8):
    model.train()
    running = 0.0
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        running += loss.item() * len(xb)
    scheduler.step()
    model.eval()
    with torch.no_grad():
        logits = model(val_x)
        val_loss = criterion(logits, val_y).item()
        acc = (logits.argmax(1) == val_y).float().mean().item()
    print(f"epoch {epoch} train {running / len(train_x):.4f} val {val_loss:.4f} acc {acc:.3f}")
