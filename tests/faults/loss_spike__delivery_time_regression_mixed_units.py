"""Delivery-time regression from a log where a few trips were recorded in seconds instead of
minutes; an MLP with Adam, shuffled DataLoader. The batches holding those rows throw the loss up
far above its level every epoch, and training recovers each time.

planted: kind=loss_spike cause=label_problem
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

n = 2048
distance = torch.rand(n, 1) * 20
traffic = torch.rand(n, 1)
stops = torch.randint(0, 5, (n, 1)).float()
features = torch.cat([distance / 10, traffic, stops / 4, torch.randn(n, 3)], dim=1)
minutes = 3 * distance + 15 * traffic + 4 * stops + torch.randn(n, 1)

# rows imported from the second depot's export
imported = torch.tensor([137, 901, 1544])
minutes[imported] = minutes[imported] * 60

target = (minutes - 40) / 20
loader = DataLoader(TensorDataset(features, target), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()

for epoch in range(10):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
