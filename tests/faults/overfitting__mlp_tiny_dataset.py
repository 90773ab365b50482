"""Wide MLP trained for many epochs on only 64 noisy training samples, with a validation pass every
25 steps: the training loss goes to ~0 while the validation loss turns around and climbs.

planted: kind=overfitting cause=model_too_large_for_data
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

w = torch.randn(20, 1)
def make(n):
    x = torch.randn(n, 20)
    return x, ((x @ w).squeeze(1) + 1.0 * torch.randn(n) > 0).long()

X_train, y_train = make(64)
X_val, y_val = make(512)
model = nn.Sequential(nn.Linear(20, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2))  # fault
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for step in range(400):
    model.train()
    i = torch.randint(0, len(X_train), (32,))
    optimizer.zero_grad()
    loss = criterion(model(X_train[i]), y_train[i])
    loss.backward()
    optimizer.step()
    if step % 25 == 0:
        model.eval()
        with torch.no_grad():
            val_loss = criterion(model(X_val), y_val)
        print(f"step {step} train {loss.item():.4f} val {val_loss.item():.4f}")
