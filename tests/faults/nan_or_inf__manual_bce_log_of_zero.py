"""Binary classifier with a hand-written BCE: -(y*log(p) + (1-y)*log(1-p)) on sigmoid outputs. Once
the model gets confident, sigmoid rounds to exactly 1.0 in float32 and log(0) gives inf, then NaN.

planted: kind=nan_or_inf cause=numerically_unstable_op
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 10)
y = (X[:, 0] > 0).float().unsqueeze(1)
X[:, 0] *= 20  # a strongly separating feature: the logits quickly become large

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

for step in range(200):
    i = torch.randint(0, len(X), (128,))
    p = model(X[i])
    loss = -(y[i] * torch.log(p) + (1 - y[i]) * torch.log(1 - p)).mean()  # fault: log(0) when p hits 0 or 1
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.4g}")
