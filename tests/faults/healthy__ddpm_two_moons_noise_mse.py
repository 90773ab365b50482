"""A tiny denoising diffusion model (DDPM, epsilon prediction) on 2-D two-moons points: linear beta
schedule over 50 timesteps, a sinusoidal timestep embedding, an MLP noise predictor, MSE between
the predicted and the true noise at a random timestep per sample, Adam 1e-3 with EMA-free
training, 600 steps; ancestral sampling of 500 points at the end. The loss levels off well above
zero by nature: noise at high timesteps cannot be predicted from the point.

planted: kind=none cause=none
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
torch.set_num_threads(1)


def two_moons(n):
    t = torch.rand(n) * math.pi
    upper = torch.rand(n) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2)


data = two_moons(4000)
data = (data - data.mean(0)) / data.std(0)
T = 50
betas = torch.linspace(1e-4, 0.2, T)
alphas = 1 - betas
alpha_bar = torch.cumprod(alphas, 0)


def timestep_embedding(t, dim=16):
    freqs = torch.exp(-math.log(1000) * torch.arange(dim // 2) / (dim // 2))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], 1)


class Denoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 16, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, timestep_embedding(t)], 1))


model = Denoiser()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(600):
    x0 = data[torch.randint(0, len(data), (256,))]
    t = torch.randint(0, T, (256,))
    noise = torch.randn_like(x0)
    ab = alpha_bar[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    loss = F.mse_loss(model(xt, t), noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 100 == 0:
        print(f"step {step} loss {loss.item():.4f}")

with torch.no_grad():
    x = torch.randn(500, 2)
    for t in reversed(range(T)):
        eps = model(x, torch.full((500,), t))
        x = (x - betas[t] / (1 - alpha_bar[t]).sqrt() * eps) / alphas[t].sqrt()
        if t > 0:
            x = x + betas[t].sqrt() * torch.randn_like(x)
print(f"sample mean {x.mean(0).tolist()} std {x.std(0).tolist()}")
