"""Fine-tuning pattern gone wrong: the optimizer is created, then the classifier head is replaced
with a new nn.Linear for the new number of classes. The new head is not in the optimizer, so it
keeps its random weights forever.

planted: kind=unchanged_weights cause=parameters_not_in_optimizer
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.backbone(x))


X = torch.randn(2048, 20)
y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
model.head = nn.Linear(64, 4)  # fault: replaced after the optimizer took the old parameters
criterion = nn.CrossEntropyLoss()

step = 0
w0 = model.head.weight.detach().clone()
for epoch in range(5):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        step += 1
    print(f"epoch {epoch} loss {loss.item():.4f} head changed: {not torch.equal(w0, model.head.weight)}")
