"""Lightning tabular classifier (20 features, 4 classes decided by a few of them): an encoder and a
head in a LightningModule, Adam, a validation loader with accuracy logged every epoch. The encoder
is frozen at first so that the head settles before the encoder is tuned.

planted: kind=unchanged_weights cause=frozen_parameters
"""
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")
torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(3000, 20)
y = (X[:, 0] > 0).long() * 2 + (X[:, 3] + X[:, 7] > 0).long()
train = TensorDataset(X[:2400], y[:2400])
val = TensorDataset(X[2400:], y[2400:])


class TabularModel(L.LightningModule):
    def __init__(self, lr=3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)
        self.encoder.requires_grad_(False)  # warm up the head first

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, t = batch
        loss = F.cross_entropy(self(x), t)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, t = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, t))
        self.log("val_acc", (logits.argmax(1) == t).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


trainer = L.Trainer(max_epochs=8, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(TabularModel(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256))
print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
