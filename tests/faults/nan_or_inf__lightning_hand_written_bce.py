"""Lightning binary classifier: a LightningModule with a sigmoid head, trained with a hand-written
binary cross-entropy -(y*log(p) + (1-y)*log(1-p)) in training_step. One feature separates the
classes strongly, so the model gets confident fast and sigmoid rounds to exactly 0 or 1 in float32.

planted: kind=nan_or_inf cause=numerically_unstable_op
"""
import warnings

import lightning as L
import torch
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
        self.backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())

    def training_step(self, batch, batch_idx):
        x, t = batch
        p = self.backbone(x)
        loss = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


loader = DataLoader(TensorDataset(X, y), batch_size=128, shuffle=True)
trainer = L.Trainer(max_epochs=12, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(Classifier(), loader)
print("final train loss", float(trainer.callback_metrics["train_loss"]))
