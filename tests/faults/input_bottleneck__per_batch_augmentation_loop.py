"""CNN trained with manual batching where every batch is "augmented" image by image with Python
loops (random crop and flip done pixel-row by pixel-row) before the forward pass: data preparation
dominates the step time.

planted: kind=input_bottleneck cause=slow_data_loading
"""
import random
import time

import torch
from torch import nn

torch.manual_seed(0)
random.seed(0)
torch.set_num_threads(1)

images = torch.randn(2048, 1, 16, 16)
labels = (images[:, 0, :8].mean((1, 2)) > 0).long()


def augment(img):
    # fault: per-image, per-row Python work, plus a simulated slow read from disk
    time.sleep(0.0005)
    out = torch.empty(1, 12, 12)
    dx, dy = random.randint(0, 4), random.randint(0, 4)
    for r in range(12):
        row = img[0, dy + r, dx:dx + 12]
        out[0, r] = row.flip(0) if random.random() < 0.5 else row
    return out


model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 36, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()

for step in range(100):
    idx = torch.randint(0, len(images), (32,))
    xb = torch.stack([augment(images[i]) for i in idx])
    optimizer.zero_grad()
    loss = criterion(model(xb), labels[idx])
    loss.backward()
    optimizer.step()
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.4f}")
