"""ResNet-style CNN (two residual stages with BatchNorm) classifying 16x16 RGB textures into 5
classes (stripes at five orientations). The BatchNorm affine parameters are kept at their initial
scale and shift on purpose: the optimizer gets only the conv and linear weights. SGD with momentum
and weight decay, OneCycleLR over the whole run, DataLoader with shuffling, test accuracy per epoch.

planted: kind=none cause=none
"""
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make_textures(n, classes=5):
    labels = torch.randint(0, classes, (n,))
    angle = labels.float() * math.pi / classes
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    phase = torch.rand(n, 1, 1) * 2 * math.pi
    wave = torch.sin(0.9 * (xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]) + phase)
    colour = torch.rand(n, 3, 1, 1) * 0.5 + 0.5
    return wave.unsqueeze(1) * colour + 1.5 * torch.randn(n, 3, 16, 16), labels


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = ResBlock(16, 16, 1)
        self.layer2 = ResBlock(16, 32, 2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


train_x, train_y = make_textures(1536)
test_x, test_y = make_textures(512)
loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)
model = SmallResNet()
bn_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
trainable = [p for p in model.parameters() if id(p) not in bn_params]
epochs = 5
optimizer = torch.optim.SGD(trainable, lr=0.05, momentum=0.9, weight_decay=5e-4)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * len(loader))
criterion = nn.CrossEntropyLoss()

for epoch in range(epochs):
    model.train()
    total = 0.0
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(xb)
    model.eval()
    with torch.no_grad():
        acc = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"epoch {epoch} train loss {total / len(train_x):.4f} test acc {acc:.3f}")
