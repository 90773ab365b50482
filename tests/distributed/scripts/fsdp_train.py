"""A small FSDP training (gloo, CPU), picked by WRAP and FAULT:

WRAP     fsdp2 (fully_shard on fc1, fc2 and the root), fsdp1 (FullyShardedDataParallel, flat
         parameters), fsdp1_orig (the same with use_orig_params=True), fsdp1_ignored (fc3 left
         out of FSDP: whole on every rank, its gradients never averaged), hsdp_replicas (FSDP2 on a
         mesh of 2 replicas, each holding whole parameters)
FAULT    healthy (SGD lr 0.1, momentum 0.9), high_lr (lr 30), desync (rank 1 adds 0.01 to its
         fc3.weight after step DESYNC_AT), monitor_breaks (the monitor of rank 1 alone stops with an
         internal error at step 5: the other rank must not wait for it)
NORMS    a path: rank 0 writes there, per step, the gradient norm clip_grad_norm_ returns (FSDP1's
         own method, torch.nn.utils' for FSDP2 DTensors) and the norm of the full gradients
         gathered from the shards, as JSON
"""

import json
import math
import os

import torch
import torch.distributed as dist
from torch import nn

WRAP = os.environ.get("WRAP", "fsdp2")
FAULT = os.environ.get("FAULT", "healthy")
STEPS = int(os.environ.get("STEPS", "40"))
LR = {"high_lr": 30.0}.get(FAULT, 0.1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def batch(step, rank):
    """The batch rank `rank` trains on at `step` (the test rebuilds it for its unsharded reference)."""
    gen = torch.Generator().manual_seed(1000 * rank + step)
    w = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    x = torch.randn(32, 16, generator=gen)
    return x, (x @ w).argmax(1)


def wrap(net):
    if WRAP in ("fsdp2", "hsdp_replicas"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # hsdp_replicas: a 2-D mesh of 2 replicas x shards of 1 rank (placements Replicate, Shard(0))
        mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard")) if WRAP != "fsdp2" else None
        for layer in (net.fc1, net.fc2):  # fc3 is the root unit's (its full parameters live until the reshard)
            fully_shard(layer, mesh=mesh)
        return fully_shard(net, mesh=mesh)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    ignored = [net.fc3] if WRAP == "fsdp1_ignored" else None
    return FSDP(net, use_orig_params=WRAP == "fsdp1_orig", device_id=torch.device("cpu"), ignored_modules=ignored)


def full_grad_norm(model):
    """The norm of the whole gradient, gathered from every rank's shard."""
    if WRAP == "fsdp2":
        return math.sqrt(sum(float(p.grad.full_tensor().double().pow(2).sum()) for p in model.parameters()))
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if WRAP == "fsdp1":  # flat parameters: every rank's shard of the flat gradient (padded to one size)
        shard = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        shards = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, shard)
        return float(torch.cat(shards).double().norm())
    with FSDP.summon_full_params(model, with_grads=True):
        return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def clipped_norm(model):
    if WRAP == "fsdp2":
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9))
    return float(model.clip_grad_norm_(1e9))


def _break_the_monitor():
    """An internal error in the monitor of this rank alone, from the next optimizer step on."""
    from modeldebug.collect import hooks

    def fail(self, st):
        raise RuntimeError("planted internal error")

    hooks.Hooks._read_gradients = fail


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = wrap(Net())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    norms = []
    for step in range(STEPS):
        x, y = batch(step, rank)
        if FAULT == "monitor_breaks" and rank == 1 and step == 5:
            _break_the_monitor()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if os.environ.get("NORMS"):
            norms.append({"step": step, "clip": clipped_norm(model), "full": full_grad_norm(model)})
        opt.step()
        if FAULT == "desync" and rank == 1 and step == int(os.environ.get("DESYNC_AT", "25")):
            with torch.no_grad():
                weight = model.fc3.weight
                (weight.to_local() if hasattr(weight, "to_local") else weight).add_(0.01)
    if rank == 0 and os.environ.get("NORMS"):
        with open(os.environ["NORMS"], "w") as f:
            json.dump(norms, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
