"""A small image classifier with a classic bug: optimizer.zero_grad() is never called.

Gradients pile up step after step, so every update is the sum of all gradients so far: the
loss first falls, then stalls and swings. Run it under modeldebug to see the diagnosis:

    modeldebug run -- python examples/forgot_zero_grad.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)


def make_images(n, generator=None):
    """Synthetic 8x8 "images" of 4 classes: each class lights up its own quadrant."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.randn(n, 1, 8, 8, generator=generator) * 0.5
    for c in range(4):
        r, q = divmod(c, 2)
        images[labels == c, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 1.0
    return images, labels


images, labels = make_images(2048)
test_images, test_labels = make_images(512, torch.Generator().manual_seed(1))  # never trained on
loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True)

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 4),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()

for epoch in range(6):
    model.train()
    for x, y in loader:
        # BUG: optimizer.zero_grad() is missing here
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test_images).argmax(1) == test_labels).float().mean().item()
    print(f"epoch {epoch}: train loss {loss.item():.3f}, test accuracy {acc:.1%}")
