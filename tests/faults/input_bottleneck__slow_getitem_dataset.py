"""Small MLP fed by a Dataset whose __getitem__ does heavy per-sample work in Python (a feature
"decoder" loop), with num_workers=0: each step waits far longer for its batch than it computes.

planted: kind=input_bottleneck cause=slow_data_loading
"""
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.manual_seed(0)
torch.set_num_threads(1)


class DecodedRecords(Dataset):
    def __init__(self, n=4096):
        self.raw = torch.randn(n, 32).tolist()

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, i):
        row = self.raw[i]
        # fault: per-sample pure-Python "decoding" on every access, in the main process
        feats = [sum(math.sin(v * k) for k in range(1, 40)) for v in row]
        return torch.tensor(feats), int(row[0] > 0)


loader = DataLoader(DecodedRecords(), batch_size=32, shuffle=True, num_workers=0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for step, (xb, yb) in enumerate(loader):
    optimizer.zero_grad()
    loss = criterion(model(xb), yb)
    loss.backward()
    optimizer.step()
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.4f}")
    if step == 100:
        break
