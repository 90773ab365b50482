"""A deep residual MLP (8 pre-LayerNorm blocks) trained with activation checkpointing
(torch.utils.checkpoint on each block, use_reentrant=False) to save memory, on a synthetic
10-class problem from a random teacher network; AdamW 2e-3 with linear warmup over 30 steps
(LambdaLR) then constant, 300 steps of 128 samples; held-out accuracy every 100 steps.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

torch.manual_seed(0)
torch.set_num_threads(1)
teacher = nn.Sequential(nn.Linear(24, 64), nn.Tanh(), nn.Linear(64, 10))


def batch(n):
    x = torch.randn(n, 24)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return x, y


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.ff(self.norm(x))


class Net(nn.Module):
    def __init__(self, d=64, depth=8):
        super().__init__()
        self.inp = nn.Linear(24, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 10))

    def forward(self, x):
        h = self.inp(x)
        for blk in self.blocks:
            h = checkpoint(blk, h, use_reentrant=False) if self.training else blk(h)
        return self.out(h)


model = Net()
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 30))
X_test, y_test = batch(1000)
for step in range(300):
    x, y = batch(128)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    if step % 100 == 99:
        model.eval()
        with torch.no_grad():
            acc = (model(X_test).argmax(1) == y_test).float().mean().item()
        model.train()
        print(f"step {step} loss {loss.item():.3f} test acc {acc:.3f}")
