"""Small CNN regressing an image statistic with MSE, trained with SGD at lr=1.0: every update
overshoots further until the weights overflow to inf and the loss becomes NaN.

planted: kind=nan_or_inf cause=learning_rate_too_high
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(1024, 1, 16, 16)
y = X[:, :, :8].mean((1, 2, 3)).unsqueeze(1) * 10
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
    nn.Flatten(), nn.Linear(16 * 4 * 4, 1),
)
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # fault: ~100x too high for MSE on this scale
criterion = nn.MSELoss()

step = 0
for epoch in range(3):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.4g}")
        step += 1
