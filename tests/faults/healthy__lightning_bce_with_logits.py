"""Lightning binary classifier: a LightningModule with a linear head trained with
binary_cross_entropy_with_logits in training_step; one feature separates the classes strongly,
so the model gets confident fast.

planted: kind=none cause=none
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

X = torch.randn(2048, 10)
y = (X[:, 0] > 0).float().unsqueeze(1)
X[:, 0] *= 20


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, t = batch
        loss = F.binary_cross_entropy_with_logits(self.backbone(x), t)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


loader = DataLoader(TensorDataset(X, y), batch_size=128, shuffle=True)
trainer = L.Trainer(max_epochs=12, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(Classifier(), loader)
print("final train loss", float(trainer.callback_metrics["train_loss"]))
