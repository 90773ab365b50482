"""MLP training that "speeds up loading" by caching a dataset on the GPU sized to fill almost all
of the free memory: CUDA reserved memory sits at ~95% of the device for the whole run, and any
larger batch or model would run out of memory. Needs CUDA; on CPU it only says so and exits.

planted: kind=memory_pressure cause=other
requires: cuda
"""
import sys

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)
if not torch.cuda.is_available():
    print("memory_pressure needs a CUDA device; nothing to show on CPU")
    sys.exit(0)

dev = torch.device("cuda")
free, total = torch.cuda.mem_get_info()
rows = int(free * 0.93) // (4 * 257)  # fault: cache sized to ~93% of the free memory
cache = torch.empty(rows, 257, device=dev)
cache[:, :256].normal_()
cache[:, 256] = (cache[:, 0] > 0).float()

model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 2)).to(dev)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()
for step in range(100):
    i = torch.randint(0, rows, (256,), device=dev)
    xb, yb = cache[i, :256], cache[i, 256].long()
    optimizer.zero_grad()
    loss = criterion(model(xb), yb)
    loss.backward()
    optimizer.step()
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.4f} reserved {torch.cuda.memory_reserved() / total:.0%} of the device")
