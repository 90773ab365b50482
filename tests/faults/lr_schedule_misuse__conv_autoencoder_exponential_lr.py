"""Convolutional autoencoder for 16x16 images of random blurred blobs: a strided-conv encoder to
an 8-channel 4x4 code and a transposed-conv decoder, MSE reconstruction loss. A small
Trainer class runs SGD with momentum and an exponential learning-rate decay (gamma 0.9).

planted: kind=lr_schedule_misuse cause=scheduler_misuse
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def blobs(n, size=16):
    r = torch.arange(size, dtype=torch.float32)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    centres = torch.rand(n, 3, 2) * size
    widths = 1.5 + 2.5 * torch.rand(n, 3, 1, 1)
    d2 = (rows - centres[..., 0, None, None]) ** 2 + (cols - centres[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * widths ** 2)).sum(1, keepdim=True)


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1))

    def forward(self, x):
        return self.decoder(self.encoder(x))


class Trainer:
    def __init__(self, model, lr=0.05):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.9)

    def training_step(self, images):
        self.optimizer.zero_grad()
        loss = F.mse_loss(self.model(images), images)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def fit(self, loader, val_images, epochs):
        for epoch in range(epochs):
            self.model.train()
            losses = [self.training_step(images) for (images,) in loader]
            self.model.eval()
            with torch.no_grad():
                val = F.mse_loss(self.model(val_images), val_images).item()
            print(f"epoch {epoch} train mse {sum(losses) / len(losses):.5f} val mse {val:.5f}")


train_loader = DataLoader(TensorDataset(blobs(3000)), batch_size=50, shuffle=True)
Trainer(AutoEncoder()).fit(train_loader, blobs(500), epochs=10)
