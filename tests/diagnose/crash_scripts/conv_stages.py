"""Image classifier in stages of conv blocks; the third stage is declared for the wrong width."""

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn1(self.conv1(x)))


class Classifier(nn.Module):
    def __init__(self, widths=(3, 16, 32, 64), classes=10):
        super().__init__()
        self.stages = nn.Sequential(ConvBlock(widths[0], widths[1]), ConvBlock(widths[1], widths[2]),
                                    ConvBlock(widths[1], widths[3]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], classes)

    def forward(self, images):
        return self.fc(self.pool(self.stages(images)).flatten(1))


torch.manual_seed(0)
model = Classifier()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
images, labels = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
for epoch in range(3):
    for i in range(0, 64, 16):
        logits = model(images[i:i + 16])
        loss = nn.functional.cross_entropy(logits, labels[i:i + 16])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.3f}")
