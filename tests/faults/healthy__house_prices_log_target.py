"""House-price regression in the Kaggle style: six numeric features (area, rooms, age, distance,
...) standardised, a log1p-transformed price target (prices 50k-2M, skewed), an MLP with SiLU,
MSE on the log target, Adam 1e-3 with weight decay, early stopping on the validation RMSE over
30 epochs with patience 5; RMSE in log space printed.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)
N = 3000
area = torch.empty(N).uniform_(30, 300)
rooms = (area / 30 + torch.randn(N)).clamp(1, 10).round()
age = torch.empty(N).uniform_(0, 80)
dist = torch.empty(N).exponential_(0.2)
quality = torch.randint(1, 6, (N,)).float()
floor = torch.randint(0, 20, (N,)).float()
price = torch.exp(10.5 + 0.008 * area + 0.05 * rooms - 0.004 * age - 0.05 * dist + 0.15 * quality
                  + 0.15 * torch.randn(N))
X = torch.stack([area, rooms, age, dist, quality, floor], 1)
y = torch.log1p(price)
split = int(0.8 * N)
mu, sd = X[:split].mean(0), X[:split].std(0)
X = (X - mu) / sd
train_loader = DataLoader(TensorDataset(X[:split], y[:split]), batch_size=64, shuffle=True)
X_val, y_val = X[split:], y[split:]

model = nn.Sequential(nn.Linear(6, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
criterion = nn.MSELoss()
best, patience = float("inf"), 0
for epoch in range(30):
    model.train()
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(xb).squeeze(-1), yb)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        rmse = criterion(model(X_val).squeeze(-1), y_val).sqrt().item()
    print(f"epoch {epoch} train {loss.item():.4f} val rmse {rmse:.4f}")
    if rmse < best - 1e-4:
        best, patience = rmse, 0
    else:
        patience += 1
        if patience >= 5:
            print("early stop")
            break
