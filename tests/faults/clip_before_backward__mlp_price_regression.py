"""Five-layer MLP that predicts a price-like target (a nonlinear function of 16 standardised
features, in the tens) with MSE. SGD with momentum and a StepLR schedule, gradient-norm clipping at
1.0, DataLoader with shuffling; the train step lives in a train_epoch() function, evaluation on a
validation split after each epoch.

planted: kind=clip_before_backward cause=clipping_misplaced
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

coef = torch.randn(16)


def make_rows(n):
    x = torch.randn(n, 16)
    price = 30 + 8 * (x @ coef) / 4 + 5 * x[:, 0] * x[:, 1] + 3 * torch.relu(x[:, 2]) + torch.randn(n)
    return x, price.unsqueeze(1)


def build_model(width=128):
    layers, d = [], 16
    for _ in range(4):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 1))


def train_epoch(model, loader, optimizer, criterion, max_norm=1.0):
    model.train()
    total = 0.0
    for xb, yb in loader:
        optimizer.zero_grad()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(xb)
    return total / len(loader.dataset)


@torch.no_grad()
def validate(model, x, y, criterion):
    model.eval()
    return criterion(model(x), y).item()


train_x, train_y = make_rows(4096)
val_x, val_y = make_rows(512)
loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)
model = build_model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
criterion = nn.MSELoss()

for epoch in range(8):
    train_loss = train_epoch(model, loader, optimizer, criterion)
    scheduler.step()
    print(f"epoch {epoch} train {train_loss:.3f} val {validate(model, val_x, val_y, criterion):.3f}")
