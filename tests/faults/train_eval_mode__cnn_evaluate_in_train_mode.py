"""CNN that tells horizontal from vertical and diagonal stripe patterns in noisy 20x20 images.
Conv -> BatchNorm -> ReLU blocks, dropout before the classifier, SGD with Nesterov momentum and
a cosine schedule over the epochs. train_one_epoch() and evaluate() functions; the best
validation accuracy is kept as a checkpoint.

planted: kind=train_eval_mode cause=wrong_module_mode
"""
import copy
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def stripes(n, size=20):
    kind = torch.randint(0, 3, (n,))
    r = torch.arange(size, dtype=torch.float32)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    phase = torch.rand(n, 1, 1) * 2 * math.pi
    freq = 0.6 + 0.4 * torch.rand(n, 1, 1)
    coord = torch.stack([rows, cols, rows + cols])[kind]
    images = torch.sin(freq * coord + phase) + 2.5 * torch.randn(n, size, size)
    return images.unsqueeze(1), kind


def conv_block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


model = nn.Sequential(conv_block(1, 16), conv_block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Dropout(0.5), nn.Linear(32, 3))
train_loader = DataLoader(TensorDataset(*stripes(2400)), batch_size=48, shuffle=True)
val_loader = DataLoader(TensorDataset(*stripes(600)), batch_size=16)
epochs = 6
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
criterion = nn.CrossEntropyLoss()


def train_one_epoch():
    model.train()
    for images, labels in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
    return loss.item()


def evaluate():
    correct, total_loss = 0, 0.0
    with torch.no_grad():
        for images, labels in val_loader:
            logits = model(images)
            total_loss += criterion(logits, labels).item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
    return total_loss / len(val_loader.dataset), correct / len(val_loader.dataset)


best_acc, best_state = 0.0, None
for epoch in range(epochs):
    train_loss = train_one_epoch()
    val_loss, val_acc = evaluate()
    scheduler.step()
    if val_acc > best_acc:
        best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    print(f"epoch {epoch} train loss {train_loss:.4f} val loss {val_loss:.4f} val acc {val_acc:.3f}")
print(f"best val acc {best_acc:.3f}")
