"""A plain training script (no modeldebug import) driven by environment variables, for run tests."""

import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

steps = int(os.environ.get("STEPS", "30"))
crash_at = int(os.environ.get("CRASH_AT", "-1"))
sleep = float(os.environ.get("SLEEP", "0"))
no_step = os.environ.get("NO_STEP") == "1"
out = os.environ.get("LOSSES_OUT")

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(0)
X = torch.randn(320, 8, generator=g)
Y = X[:, :3].argmax(1)  # labels that follow from the inputs (random labels are a fault of their own)
X, Y, X_val, Y_val = X[:256], Y[:256], X[256:], Y[256:]
loader = DataLoader(TensorDataset(X, Y), batch_size=32, shuffle=True)
losses, val = [], []
step = 0
while step < steps:
    for xb, yb in loader:
        if step == crash_at:
            model(torch.randn(4, 9))  # wrong feature count: a shape error inside the model
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        if not no_step:
            opt.step()
        losses.append(loss.item())
        step += 1
        if sleep:
            time.sleep(sleep)
        if out:
            with open(out, "w") as f:
                json.dump({"losses": losses, "val": val}, f)
        if step >= steps:
            break
    with torch.no_grad():
        val.append(nn.functional.cross_entropy(model(X_val), Y_val).item())
if out:
    with open(out, "w") as f:
        json.dump({"losses": losses, "val": val}, f)
print("done", file=sys.stderr)
