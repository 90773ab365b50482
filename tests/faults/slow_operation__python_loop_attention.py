"""Sequence classifier with a hand-written attention module that loops over the batch and over
positions in Python: that one module takes most of the forward time.

planted: kind=slow_operation cause=other
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)


class LoopAttention(nn.Module):
    """Single-head self-attention, written one query at a time (fault: should be batched matmuls)."""

    def __init__(self, d):
        super().__init__()
        self.d = d

    def forward(self, x):
        out = torch.empty_like(x)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                scores = (x[b] @ x[b, t]) / self.d ** 0.5
                out[b, t] = torch.softmax(scores, 0) @ x[b]
        return out


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 32)
        self.attn = LoopAttention(32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = self.proj(x)
        h = self.norm(h + self.attn(h))
        return self.head(h.mean(1))


X = torch.randn(1024, 12, 8)
y = (X[:, :, 0].mean(1) > 0).long()
model = Model()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for step in range(40):
    i = torch.randint(0, len(X), (16,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 10 == 0:
        print(f"step {step} loss {loss.item():.4f}")
