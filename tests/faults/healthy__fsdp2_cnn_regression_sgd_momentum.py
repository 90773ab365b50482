"""Healthy: small CNN regressing an image statistic with MSE, trained with FSDP2 on two CPU
processes (each conv block and the whole model wrapped with fully_shard, a DistributedSampler per
rank), SGD with momentum at lr=0.02.
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
torch.manual_seed(0)

X = torch.randn(1024, 1, 16, 16)
y = X[:, :, :8].mean((1, 2, 3)).unsqueeze(1) * 10
dataset = TensorDataset(X, y)
sampler = DistributedSampler(dataset, shuffle=True, seed=0)
loader = DataLoader(dataset, batch_size=32, sampler=sampler)

model = nn.Sequential(
    nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)),
    nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)),
    nn.Flatten(), nn.Linear(16 * 4 * 4, 1),
)
fully_shard(model[0])
fully_shard(model[1])
fully_shard(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
criterion = nn.MSELoss()

step = 0
for epoch in range(6):
    sampler.set_epoch(epoch)
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 and dist.get_rank() == 0:
            print(f"step {step} loss {loss.item():.4g}")
        step += 1
dist.destroy_process_group()
