"""Healthy: tabular classifier (20 features, 5 classes decided by a few of them) trained with
FSDP2 on two CPU processes: a three-layer ReLU MLP, every Linear layer and the whole model wrapped
with fully_shard, Adam, a DistributedSampler per rank, validation accuracy after every epoch.

launch: torchrun 2
planted: kind=none cause=none
"""
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)


def make_split(n):
    x = torch.randn(n, 20)
    y = (x[:, :5] + 0.2 * torch.randn(n, 5)).argmax(1)
    return x, y


train_x, train_y = make_split(4000)
val_x, val_y = make_split(1000)
train_set = TensorDataset(train_x, train_y)
sampler = DistributedSampler(train_set, shuffle=True, seed=0)
loader = DataLoader(train_set, batch_size=64, sampler=sampler)

model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 5))
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer)
fully_shard(model)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for epoch in range(5):
    sampler.set_epoch(epoch)
    model.train()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item()
    model.eval()
    with torch.no_grad():
        logits = model(val_x)
        val_loss = criterion(logits, val_y).item()
        acc = (logits.argmax(1) == val_y).float().mean().item()
    if rank == 0:
        print(f"epoch {epoch} train {total / len(loader):.4f} val {val_loss:.4f} acc {acc:.3f}")
dist.destroy_process_group()
