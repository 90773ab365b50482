"""Variational autoencoder on 12x12 binary images of random rectangles and crosses (the Kingma &
Welling recipe from the PyTorch examples): MLP encoder to mean and log-variance, reparameterised
sample, MLP decoder with logits; loss = summed binary cross-entropy + KL divergence per batch,
Adam 1e-3, 8 epochs over a DataLoader, test loss each epoch.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)
SIDE = 12


def make_images(n):
    imgs = torch.zeros(n, SIDE, SIDE)
    for i in range(n):
        r0, c0 = torch.randint(0, SIDE - 4, (2,)).tolist()
        h, w = torch.randint(3, SIDE - max(r0, c0), (2,)).tolist()
        if i % 2:
            imgs[i, r0:r0 + h, c0:c0 + w] = 1.0
        else:
            imgs[i, r0 + h // 2, c0:c0 + w] = 1.0
            imgs[i, r0:r0 + h, c0 + w // 2] = 1.0
    return imgs.view(n, -1)


train_loader = DataLoader(TensorDataset(make_images(2048)), batch_size=64, shuffle=True)
test_loader = DataLoader(TensorDataset(make_images(512)), batch_size=128)


class VAE(nn.Module):
    def __init__(self, d=SIDE * SIDE, h=128, z=8):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc21, self.fc22 = nn.Linear(h, z), nn.Linear(h, z)
        self.fc3, self.fc4 = nn.Linear(z, h), nn.Linear(h, d)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def loss_function(recon_logits, x, mu, logvar):
    bce = F.binary_cross_entropy_with_logits(recon_logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


model = VAE()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(8):
    model.train()
    train_loss = 0.0
    for (data,) in train_loader:
        optimizer.zero_grad()
        recon, mu, logvar = model(data)
        loss = loss_function(recon, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    model.eval()
    test_loss = 0.0
    with torch.no_grad():
        for (data,) in test_loader:
            recon, mu, logvar = model(data)
            test_loss += loss_function(recon, data, mu, logvar).item()
    print(f"epoch {epoch} train {train_loss / 2048:.2f} test {test_loss / 512:.2f}")
