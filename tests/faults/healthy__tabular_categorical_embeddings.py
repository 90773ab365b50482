"""Tabular classifier in the fastai / Kaggle-kernel style: three categorical columns (store id of
60 values, weekday, product family of 25) through nn.Embedding tables, four numeric columns
standardised with the training statistics, concatenated into an MLP with BatchNorm and dropout;
binary target (churned or not) with BCEWithLogitsLoss, AdamW 3e-3, OneCycleLR, 6 epochs, AUC-ish
accuracy on a validation split each epoch.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)
N = 6000
cards = [60, 7, 25]
cats = torch.stack([torch.randint(0, c, (N,)) for c in cards], dim=1)
nums = torch.randn(N, 4) * torch.tensor([5.0, 100.0, 0.5, 20.0]) + torch.tensor([30.0, 500.0, 1.0, 50.0])
store_effect, family_effect = torch.randn(60), torch.randn(25)
logit = (store_effect[cats[:, 0]] + family_effect[cats[:, 2]] + 0.5 * (cats[:, 1] >= 5).float()
         + (nums[:, 0] - 30) / 5 - (nums[:, 1] - 500) / 200)
y = (torch.rand(N) < torch.sigmoid(logit)).float()
split = int(0.8 * N)
mean, std = nums[:split].mean(0), nums[:split].std(0)
nums = (nums - mean) / std
train_loader = DataLoader(TensorDataset(cats[:split], nums[:split], y[:split]), batch_size=128, shuffle=True)
val_loader = DataLoader(TensorDataset(cats[split:], nums[split:], y[split:]), batch_size=512)


class TabularModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(c, min(16, (c + 1) // 2)) for c in cards)
        n_emb = sum(e.embedding_dim for e in self.embeds)
        self.bn_num = nn.BatchNorm1d(4)
        self.layers = nn.Sequential(
            nn.Linear(n_emb + 4, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Dropout(0.1),
            nn.Linear(128, 64), nn.ReLU(), nn.BatchNorm1d(64), nn.Dropout(0.1),
            nn.Linear(64, 1))

    def forward(self, x_cat, x_num):
        x = torch.cat([e(x_cat[:, i]) for i, e in enumerate(self.embeds)] + [self.bn_num(x_num)], dim=1)
        return self.layers(x).squeeze(1)


model = TabularModel()
epochs = 6
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * len(train_loader))
criterion = nn.BCEWithLogitsLoss()
for epoch in range(epochs):
    model.train()
    for x_cat, x_num, target in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(x_cat, x_num), target)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        correct = total = 0
        val_loss = 0.0
        for x_cat, x_num, target in val_loader:
            out = model(x_cat, x_num)
            val_loss += criterion(out, target).item() * len(target)
            correct += ((out > 0).float() == target).sum().item()
            total += len(target)
    print(f"epoch {epoch} train {loss.item():.3f} val {val_loss / total:.3f} acc {correct / total:.3f}")
