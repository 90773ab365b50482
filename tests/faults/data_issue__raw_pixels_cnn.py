"""CNN fed raw 0-255 pixel values (uint8 images cast to float without scaling or normalization):
activations and gradients are ~100x too large and training is erratic.

planted: kind=data_issue cause=unnormalized_inputs
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

images = torch.randint(0, 256, (1024, 1, 12, 12), dtype=torch.uint8)
labels = (images[:, 0, :6].float().mean((1, 2)) > images[:, 0, 6:].float().mean((1, 2))).long()
loader = DataLoader(TensorDataset(images.float(), labels), batch_size=32, shuffle=True)  # fault: no /255, no Normalize

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 2),
)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
criterion = nn.CrossEntropyLoss()

step = 0
for epoch in range(4):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.4g}")
        step += 1
