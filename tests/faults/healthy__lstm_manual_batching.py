"""Healthy: LSTM sequence classifier, Adam, manual batching with a shuffled index per epoch.

planted: kind=none cause=none
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(2048, 12, 4)
y = (X[:, :, 0].sum(1) > 0).long()


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


model = LSTMClassifier()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
criterion = nn.CrossEntropyLoss()

for epoch in range(3):
    perm = torch.randperm(len(X))
    for k in range(0, len(X), 32):
        i = perm[k:k + 32]
        optimizer.zero_grad()
        loss = criterion(model(X[i]), y[i])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
