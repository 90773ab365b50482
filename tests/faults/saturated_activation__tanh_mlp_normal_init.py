"""Tanh MLP (three hidden layers of 256) for a 3-class problem on 30 standardised features; the
weights are initialised from a normal distribution, biases at zero. 1,000 training rows, Adam,
manual mini-batches, training and validation loss printed every 5 epochs.

planted: kind=saturated_activation cause=bad_weight_init
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

proj = torch.randn(30, 3)


def make_rows(n):
    x = torch.randn(n, 30)
    return x, (x @ proj + 0.3 * torch.randn(n, 3)).argmax(1)


class TanhMLP(nn.Module):
    def __init__(self, d_in=30, width=256, classes=3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width), nn.Tanh(),
            nn.Linear(width, width), nn.Tanh(),
            nn.Linear(width, width), nn.Tanh(),
            nn.Linear(width, classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=1.0)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


train_x, train_y = make_rows(1000)
val_x, val_y = make_rows(1000)
model = TanhMLP()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
criterion = nn.CrossEntropyLoss()

for epoch in range(20):
    model.train()
    order = torch.randperm(len(train_x))
    for start in range(0, len(train_x), 50):
        idx = order[start:start + 50]
        optimizer.zero_grad()
        loss = criterion(model(train_x[idx]), train_y[idx])
        loss.backward()
        optimizer.step()
    if epoch % 5 == 4:
        model.eval()
        with torch.no_grad():
            train_loss = criterion(model(train_x), train_y).item()
            val_logits = model(val_x)
            val_loss = criterion(val_logits, val_y).item()
            val_acc = (val_logits.argmax(1) == val_y).float().mean().item()
        print(f"epoch {epoch} train {train_loss:.4f} val {val_loss:.4f} val acc {val_acc:.3f}")
