"""SimCLR-style contrastive encoder on synthetic 16-d vectors from 20 latent prototypes: two noisy
augmented views per sample, an MLP encoder with a projection head, InfoNCE (NT-Xent) loss as
cross-entropy over the 2N x 2N cosine-similarity matrix at temperature 0.2 with the positive pair
as the target, AdamW 1e-3, 300 steps; a linear probe's nearest-prototype accuracy at the end.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
torch.set_num_threads(1)
prototypes = torch.randn(20, 16) * 2


def sample(n):
    ids = torch.randint(0, 20, (n,))
    return prototypes[ids] + 0.3 * torch.randn(n, 16), ids


def augment(x):
    mask = (torch.rand_like(x) > 0.2).float()
    return x * mask + 0.3 * torch.randn_like(x)


encoder = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 64))
projector = nn.Sequential(nn.ReLU(), nn.Linear(64, 32))
optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(projector.parameters()), lr=1e-3)


def nt_xent(z1, z2, temperature=0.2):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.size(0)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


for step in range(300):
    x, _ = sample(128)
    loss = nt_xent(projector(encoder(augment(x))), projector(encoder(augment(x))))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.3f}")

with torch.no_grad():
    x, ids = sample(500)
    h = F.normalize(encoder(x), dim=1)
    centers = F.normalize(encoder(prototypes), dim=1)
    acc = ((h @ centers.t()).argmax(1) == ids).float().mean().item()
print(f"nearest-prototype accuracy {acc:.3f}")
