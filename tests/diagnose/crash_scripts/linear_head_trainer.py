"""Tabular model trained by a small Trainer class that runs the backbone and the head separately."""

import torch
from torch import nn


class TabularNet(nn.Module):
    def __init__(self, features=20, hidden=64, classes=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.head(self.backbone(x))


class Trainer:
    def __init__(self, model, lr=1e-2):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.criterion = nn.CrossEntropyLoss()

    def training_step(self, x, y):
        features = self.model.backbone(x)
        logits = self.model.head(features)
        loss = self.criterion(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def fit(self, x, y, epochs=5):
        for _ in range(epochs):
            for i in range(0, len(x), 32):
                self.training_step(x[i:i + 32], y[i:i + 32])


if __name__ == "__main__":
    torch.manual_seed(0)
    x, y = torch.randn(256, 20), torch.randint(0, 3, (256,))
    Trainer(TabularNet()).fit(x, y)
