"""House-price regression (12 tabular features, standardised) with a four-layer MLP, trained in
float16 autocast with a GradScaler on mini-batches from a DataLoader; prices in dollars.

planted: kind=nan_or_inf cause=numerically_unstable_op
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

n = 4096
features = torch.randn(n, 12)
weights = torch.randn(12)
price = 250_000 + 60_000 * (features @ weights) / weights.norm() + 5_000 * torch.randn(n)
loader = DataLoader(TensorDataset(features, price.unsqueeze(1)), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(12, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                      nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
scaler = torch.amp.GradScaler("cpu")
criterion = nn.MSELoss()

for epoch in range(3):
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item()
    print(f"epoch {epoch} mse {total / len(loader):.4g} scale {scaler.get_scale():.3g}")
