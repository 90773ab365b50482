"""MLP for a tabular churn-style task: 24 numeric features, binary label from a noisy linear score.
A 600-row dataset split 480/120 into train and validation, DataLoaders for both, Adam, early
stopping on the validation loss with a patience of 10 epochs.

planted: kind=validation_overlap cause=data_leakage
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

n_rows, n_features = 600, 24
X = torch.randn(n_rows, n_features)
w = torch.randn(n_features)
y = ((X @ w) / n_features ** 0.5 + 0.8 * torch.randn(n_rows) > 0).long()

n_train = 480
X_train, y_train = X[:n_train], y[:n_train]
X_val, y_val = X[n_train:], y[n_train:]
train_loader = DataLoader(TensorDataset(X_train, y_train), batch_size=32, shuffle=True)
val_loader = DataLoader(TensorDataset(X_train, y_train), batch_size=120)

model = nn.Sequential(nn.Linear(n_features, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

best, patience, bad_epochs = float("inf"), 10, 0
for epoch in range(60):
    model.train()
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    model.eval()
    val_loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for xb, yb in val_loader:
            logits = model(xb)
            val_loss += criterion(logits, yb).item() * len(xb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(xb)
    val_loss /= seen
    if epoch % 5 == 0:
        print(f"epoch {epoch} train {loss.item():.4f} val {val_loss:.4f} val acc {correct / seen:.3f}")
    if val_loss < best:
        best, bad_epochs = val_loss, 0
    else:
        bad_epochs += 1
        if bad_epochs >= patience:
            print(f"early stop at epoch {epoch}")
            break
print(f"best val loss {best:.4f}")
