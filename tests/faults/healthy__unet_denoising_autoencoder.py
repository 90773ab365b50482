"""U-Net-ish convolutional denoising autoencoder on 16x16 images of soft blobs: two down blocks
(conv-BN-ReLU, max-pool), a bottleneck, two up blocks (transposed conv, skip concatenation), a
1x1 output conv; noisy input, clean target, L1 loss, Adam 2e-3 with ReduceLROnPlateau on the
validation loss, 5 epochs.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def blobs(n, side=16):
    yy, xx = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    imgs = torch.zeros(n, 1, side, side)
    for _ in range(3):
        cy, cx = torch.rand(n, 1, 1) * side, torch.rand(n, 1, 1) * side
        r = 1.5 + 2 * torch.rand(n, 1, 1)
        imgs[:, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
    return imgs.clamp(0, 1)


clean_train, clean_val = blobs(640), blobs(192)
train_loader = DataLoader(TensorDataset(clean_train), batch_size=32, shuffle=True)


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down1, self.down2 = block(1, 16), block(16, 32)
        self.mid = block(32, 64)
        self.up2, self.dec2 = nn.ConvTranspose2d(64, 32, 2, stride=2), block(64, 32)
        self.up1, self.dec1 = nn.ConvTranspose2d(32, 16, 2, stride=2), block(32, 16)
        self.out = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        m = self.mid(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(m), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


model = UNet()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
for epoch in range(5):
    model.train()
    for (clean,) in train_loader:
        noisy = clean + 0.3 * torch.randn_like(clean)
        loss = F.l1_loss(model(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val = F.l1_loss(model(clean_val + 0.3 * torch.randn_like(clean_val)), clean_val).item()
    scheduler.step(val)
    print(f"epoch {epoch} train {loss.item():.4f} val {val:.4f}")
