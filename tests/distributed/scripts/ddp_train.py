"""A small DDP training (gloo, CPU) with one planted fault, picked by FAULT:

healthy   nothing wrong
desync    rank 1 adds 0.01 to fc2.weight after step DESYNC_AT (parameters drift apart)
straggler rank 1 sleeps SLEEP_S before every forward (every other rank waits for it)
nan       rank 1 feeds a NaN batch at step NAN_AT
crash     rank 1 raises at step CRASH_AT
uneven    rank 1 gets one batch more than rank 0 (it waits forever for rank 0 at the end)
"""

import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

FAULT = os.environ.get("FAULT", "healthy")
STEPS = int(os.environ.get("STEPS", "60"))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(Net())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
    w = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    steps = STEPS + (1 if FAULT == "uneven" and rank == 1 else 0)
    for step in range(steps):
        x = torch.randn(32, 16, generator=gen)
        y = (x @ w).argmax(1)
        if FAULT == "nan" and rank == 1 and step == int(os.environ.get("NAN_AT", "25")):
            x[0, 0] = float("nan")
        if FAULT == "straggler" and rank == 1:
            time.sleep(float(os.environ.get("SLEEP_S", "0.03")))
        if FAULT == "crash" and rank == 1 and step == int(os.environ.get("CRASH_AT", "25")):
            raise ValueError("planted failure on rank 1")
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if FAULT == "desync" and rank == 1 and step == int(os.environ.get("DESYNC_AT", "25")):
            with torch.no_grad():
                model.module.fc2.weight += 0.01
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
