"""CNN whose middle "convolution" is a custom module computing each output position with a Python
loop over the image (instead of nn.Conv2d / F.conv2d): it dominates the forward time.

planted: kind=slow_operation cause=other
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)


class NaiveConv(nn.Module):
    def __init__(self, cin, cout, k=3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin * k * k) / (cin * k * k) ** 0.5)
        self.k = k

    def forward(self, x):
        n, c, h, w = x.shape
        k = self.k
        x = nn.functional.pad(x, (1, 1, 1, 1))
        out = x.new_empty(n, self.weight.shape[0], h, w)
        for i in range(h):  # fault: one output row/column at a time
            for j in range(w):
                patch = x[:, :, i:i + k, j:j + k].reshape(n, -1)
                out[:, :, i, j] = patch @ self.weight.t()
        return out


model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), NaiveConv(8, 8), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8 * 10 * 10, 2))
X = torch.randn(512, 1, 10, 10)
y = (X[:, 0, :5].mean((1, 2)) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
criterion = nn.CrossEntropyLoss()

for epoch in range(2):
    for step, (xb, yb) in enumerate(loader):
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
