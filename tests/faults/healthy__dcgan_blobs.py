"""DCGAN-style GAN on 16x16 grayscale images of bright Gaussian blobs at random positions. The
generator maps a 32-d noise vector through transposed convolutions with BatchNorm and ReLU to a
tanh image; the discriminator is a strided conv net with LeakyReLU and BatchNorm ending in a
sigmoid, trained with BCELoss. Adam(lr=2e-4, betas=(0.5, 0.999)) for both; the discriminator gets
a short head start before the generator begins to train.

planted: kind=none cause=none
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

NZ, SIZE, BATCH = 32, 16, 64
grid = torch.stack(torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij"), -1).float()


def real_batch(n):
    centers = torch.rand(n, 1, 1, 2) * (SIZE - 6) + 3
    width = 1.5 + torch.rand(n, 1, 1) * 1.5
    blob = torch.exp(-((grid - centers) ** 2).sum(-1) / (2 * width ** 2))
    return (blob * 2 - 1).unsqueeze(1)


class Generator(nn.Module):
    def __init__(self, ngf=32):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(NZ, ngf * 2, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, ndf=32):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
        )

    def forward(self, x):
        return self.main(x).view(-1)


def weights_init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


netG, netD = Generator(), Discriminator()
netG.apply(weights_init)
netD.apply(weights_init)
criterion = nn.BCELoss()
optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
fixed_noise = torch.randn(16, NZ, 1, 1)
real_label, fake_label = 1.0, 0.0
d_head_start = 20

for step in range(250):
    # (1) discriminator: maximize log(D(x)) + log(1 - D(G(z)))
    netD.zero_grad()
    real = real_batch(BATCH)
    label = torch.full((BATCH,), real_label)
    errD_real = criterion(netD(real), label)
    errD_real.backward()
    noise = torch.randn(BATCH, NZ, 1, 1)
    fake = netG(noise)
    label.fill_(fake_label)
    errD_fake = criterion(netD(fake.detach()), label)
    errD_fake.backward()
    optimizerD.step()

    # (2) generator: maximize log(D(G(z)))
    if step >= d_head_start:
        netG.zero_grad()
        label.fill_(real_label)
        errG = criterion(netD(fake), label)
        errG.backward()
        optimizerG.step()
        g_loss = errG.item()
    else:
        g_loss = float("nan")

    if step % 50 == 0 or step == 249:
        with torch.no_grad():
            sample = netG(fixed_noise)
        print(f"step {step} loss_D {(errD_real + errD_fake).item():.4f} loss_G {g_loss:.4f} "
              f"sample mean {sample.mean():.3f} std {sample.std():.3f}")
