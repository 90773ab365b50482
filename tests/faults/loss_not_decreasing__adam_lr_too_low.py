"""GRU sequence classifier trained with Adam at lr=1e-7 (a typo for 1e-3): the updates are a
ten-thousandth of what they should be and the loss does not move.

planted: kind=loss_not_decreasing cause=learning_rate_too_low
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(1024, 15, 6)
y = (X[:, :, 0].mean(1) > 0).long() + (X[:, -1, 1] > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 32, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


model = GRUClassifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-7)  # fault: meant 1e-3
criterion = nn.CrossEntropyLoss()

step = 0
for epoch in range(5):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        step += 1
    print(f"epoch {epoch} loss {loss.item():.4f}")
