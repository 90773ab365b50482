"""A tiny denoising diffusion model on 2-D ring points as a LightningModule: epsilon prediction
with an MLP on the point and a sinusoidal timestep embedding, MSE to the true noise, AdamW with a
cosine schedule over the epochs (`"interval": "step"` in configure_optimizers), a
validation loss each epoch, 8 epochs of 16 batches.

requires: lightning
planted: kind=lr_schedule_misuse cause=scheduler_misuse
"""
import math
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")
torch.manual_seed(0)
torch.set_num_threads(1)


def ring(n):
    a = torch.rand(n) * 2 * math.pi
    r = 1.0 + 0.1 * torch.randn(n)
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], 1)


T = 40
BATCH, EPOCHS = 128, 8
train_set, val_set = TensorDataset(ring(BATCH * 16)), TensorDataset(ring(512))


def embed_t(t, dim=16):
    freqs = torch.exp(-math.log(1000) * torch.arange(dim // 2) / (dim // 2))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], 1)


class Diffusion(L.LightningModule):
    def __init__(self, lr=2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(18, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
        self.register_buffer("alpha_bar", torch.cumprod(1 - torch.linspace(1e-4, 0.25, T), 0))

    def noise_loss(self, x0):
        t = torch.randint(0, T, (x0.size(0),), device=x0.device)
        noise = torch.randn_like(x0)
        ab = self.alpha_bar[t][:, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return F.mse_loss(self.net(torch.cat([xt, embed_t(t)], 1)), noise)

    def training_step(self, batch, batch_idx):
        loss = self.noise_loss(batch[0])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.noise_loss(batch[0]))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Diffusion(), DataLoader(train_set, batch_size=BATCH, shuffle=True), DataLoader(val_set, batch_size=256))
print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
