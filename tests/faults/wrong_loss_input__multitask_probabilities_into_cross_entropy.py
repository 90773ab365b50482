"""Multi-task model on one shared trunk: a 5-way classification head with class probabilities (cross-entropy) and a
regression head (MSE on a standardised target) trained on the summed loss, 0.5 weight on the
regression term; a CNN trunk on 12x12 synthetic images whose class is the shape and whose
regression target is its brightness; SGD momentum 0.9 lr 0.02, CosineAnnealingLR per epoch,
6 epochs; validation accuracy and MSE.

planted: kind=wrong_loss_input cause=wrong_loss_function
"""
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make(n):
    imgs = 0.1 * torch.randn(n, 1, 12, 12)
    labels = torch.randint(0, 5, (n,))
    bright = torch.rand(n) + 0.5
    for i in range(n):
        c, b = labels[i].item(), bright[i]
        if c == 0:
            imgs[i, 0, 3:9, 3:9] += b
        elif c == 1:
            imgs[i, 0, 5:7, :] += b
        elif c == 2:
            imgs[i, 0, :, 5:7] += b
        elif c == 3:
            imgs[i, 0].diagonal().add_(b)
        else:
            imgs[i, 0, ::3, ::3] += b
    return imgs, labels, (bright - 1.0) / 0.29


train_loader = DataLoader(TensorDataset(*make(2000)), batch_size=64, shuffle=True)
X_val, y_val, r_val = make(400)


class MultiTask(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                                   nn.Flatten())
        self.cls_head = nn.Linear(288, 5)
        self.reg_head = nn.Sequential(nn.Linear(288, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        h = self.trunk(x)
        return torch.softmax(self.cls_head(h), dim=1), self.reg_head(h).squeeze(-1)


model = MultiTask()
optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
for epoch in range(6):
    model.train()
    for xb, yb, rb in train_loader:
        logits, reg = model(xb)
        loss = F.cross_entropy(logits, yb) + 0.5 * F.mse_loss(reg, rb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scheduler.step()
    model.eval()
    with torch.no_grad():
        logits, reg = model(X_val)
        acc = (logits.argmax(1) == y_val).float().mean().item()
        mse = F.mse_loss(reg, r_val).item()
    print(f"epoch {epoch} loss {loss.item():.3f} val acc {acc:.3f} val mse {mse:.3f}")
