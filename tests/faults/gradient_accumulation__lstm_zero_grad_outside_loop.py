"""LSTM sequence classifier from a DataLoader, trained with Adam; optimizer.zero_grad() sits before
the epoch loop instead of inside it, so gradients pile up across all batches.

planted: kind=gradient_accumulation cause=missing_zero_grad
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(1024, 12, 4)
y = (X[:, :, 0].sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


model = LSTMClassifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

optimizer.zero_grad()  # fault: once, before training, instead of once per batch
step = 0
for epoch in range(5):
    for xb, yb in loader:
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        step += 1
    gn = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    print(f"epoch {epoch} loss {loss.item():.4f} grad norm {gn:.3g}")
