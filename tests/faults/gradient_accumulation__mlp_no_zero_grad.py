"""MLP classifier whose training loop never calls optimizer.zero_grad(): every backward() adds to
the gradients of all previous steps, so the step grows without bound and training degrades.

planted: kind=gradient_accumulation cause=missing_zero_grad
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 20)
y = (X[:, :5].sum(1) > 0).long()

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
criterion = nn.CrossEntropyLoss()

for step in range(300):
    i = torch.randint(0, len(X), (64,))
    loss = criterion(model(X[i]), y[i])
    loss.backward()  # fault: no optimizer.zero_grad() anywhere in the loop
    optimizer.step()
    if step % 50 == 0:
        gn = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
        print(f"step {step} loss {loss.item():.4f} grad norm {gn:.3g}")
