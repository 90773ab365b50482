"""Binary classifier for tabular data (24 features, a nonlinear rule for the label): an MLP with
batch norm and a one-unit head, trained with BCEWithLogitsLoss and AdamW by a small Trainer
class with fit() and evaluate().

planted: kind=wrong_loss_input cause=wrong_loss_function
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


def make_dataset(n):
    x = torch.randn(n, 24)
    score = x[:, 0] * x[:, 1] + x[:, 2:6].sum(1) - 0.5 * x[:, 6] ** 2
    return TensorDataset(x, (score > 0).float())


class ChurnModel(nn.Module):
    def __init__(self, n_in=24):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                  nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(self.body(x))).squeeze(-1)


class Trainer:
    def __init__(self, model, lr=1e-3):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.criterion = nn.BCEWithLogitsLoss()

    def fit(self, train_loader, val_loader, epochs):
        for epoch in range(epochs):
            self.model.train()
            losses = []
            for x, y in train_loader:
                self.optimizer.zero_grad()
                loss = self.criterion(self.model(x), y)
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
            val_loss, val_acc = self.evaluate(val_loader)
            print(f"epoch {epoch} train {sum(losses) / len(losses):.4f} val {val_loss:.4f} acc {val_acc:.3f}")

    @torch.no_grad()
    def evaluate(self, loader):
        self.model.eval()
        loss, correct, count = 0.0, 0, 0
        for x, y in loader:
            prob = self.model(x)
            loss += nn.functional.binary_cross_entropy(prob, y, reduction="sum").item()
            correct += ((prob > 0.5).float() == y).sum().item()
            count += len(y)
        return loss / count, correct / count


train = DataLoader(make_dataset(4096), batch_size=128, shuffle=True)
val = DataLoader(make_dataset(1024), batch_size=512)
Trainer(ChurnModel()).fit(train, val, epochs=8)
