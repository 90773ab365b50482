"""House-price style regression (12 standardised features): a three-layer MLP compiled with
torch.compile, trained with MSE and plain SGD at lr=0.01 on shuffled mini-batches; the loss is
printed every 50 steps.

planted: kind=none cause=none
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(3000, 12)
w = torch.randn(12, 1)
y = X @ w + 0.5 * torch.tanh(X[:, :3]).sum(1, keepdim=True) + 0.1 * torch.randn(3000, 1)

model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
net = torch.compile(model, backend="aot_eager")
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loss_fn = nn.MSELoss()

for step in range(300):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = loss_fn(net(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.4f}")
