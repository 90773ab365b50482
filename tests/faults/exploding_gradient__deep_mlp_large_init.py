"""Deep ReLU MLP whose weights are drawn from N(0, 1) (nn.init.normal_ with its default std) instead
of the He scale 1/sqrt(fan_in): activations grow ~11x per layer, and the gradients blow up at an
ordinary learning rate.

planted: kind=exploding_gradient cause=bad_weight_init
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 32)
y = (X[:, :4].sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

layers = [nn.Linear(32, 256), nn.ReLU()]
for _ in range(4):
    layers += [nn.Linear(256, 256), nn.ReLU()]
layers += [nn.Linear(256, 2)]
model = nn.Sequential(*layers)
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight)  # fault: std 1, i.e. 16x the He scale for fan_in 256
        nn.init.zeros_(m.bias)

optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
criterion = nn.CrossEntropyLoss()

step = 0
for epoch in range(2):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        optimizer.step()
        if step % 20 == 0 or step < 5:
            print(f"step {step} loss {loss.item():.4g} grad_norm {gn.item():.4g}")
        step += 1
