"""Transformer encoder trained at the largest batch size that did not run out of memory, found by
doubling until OOM: the caching allocator keeps ~all of the device reserved, and the run sits at
the edge of the device's memory. Needs CUDA; on CPU it only says so and exits.

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
model = nn.Sequential(
    nn.Embedding(1000, 256),
    nn.TransformerEncoder(nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True), num_layers=4),
).to(dev)
head = nn.Linear(256, 1000).to(dev)
optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=3e-4)
criterion = nn.CrossEntropyLoss()


def train_step(batch):
    x = torch.randint(0, 1000, (batch, 512), device=dev)
    optimizer.zero_grad()
    loss = criterion(head(model(x)).flatten(0, 1), x.flatten())
    loss.backward()
    optimizer.step()
    return loss


batch = 8
while True:  # fault: probe for the largest batch that fits, then train right at that edge
    try:
        train_step(batch * 2)
        batch *= 2
    except torch.cuda.OutOfMemoryError:
        break
print(f"training at batch {batch}")
for step in range(30):
    loss = train_step(batch)
    if step % 10 == 0:
        total = torch.cuda.get_device_properties(0).total_memory
        print(f"step {step} loss {loss.item():.4f} reserved {torch.cuda.memory_reserved() / total:.0%}")
