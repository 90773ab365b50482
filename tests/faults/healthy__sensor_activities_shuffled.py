"""Healthy: activity recognition from 20 summary features of a wearable sensor window, 5 activities,
the recordings stored one activity after the other and read through a DataLoader with
shuffle=True (batches of 50), an MLP with SGD (lr 0.05, momentum 0.9), 4 epochs.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

ACTIVITIES, PER_ACTIVITY = 5, 800
centres = torch.randn(ACTIVITIES, 20) * 2
features = torch.cat([centres[k] + torch.randn(PER_ACTIVITY, 20) for k in range(ACTIVITIES)])
activity = torch.arange(ACTIVITIES).repeat_interleave(PER_ACTIVITY)
loader = DataLoader(TensorDataset(features, activity), batch_size=50, shuffle=True)

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, ACTIVITIES))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()
for epoch in range(4):
    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(features).argmax(1) == activity).float().mean().item()
    print(f"epoch {epoch} loss {loss.item():.3f} train accuracy {accuracy:.3f}")
