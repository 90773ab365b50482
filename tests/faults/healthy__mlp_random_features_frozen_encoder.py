"""Random-features classifier: a wide MLP encoder keeps its random initial weights (frozen with
requires_grad = False, as random-feature models and frozen backbones are) and only a linear head
for 6 classes is trained, with AdamW over the parameters that still require grad. Validation loss
and accuracy are computed by hand under torch.no_grad() after each epoch.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

n_features = 20
centres = torch.randn(6, n_features)
labels = torch.randint(0, 6, (3000,))
x = centres[labels] + 0.8 * torch.randn(3000, n_features)
x_train, x_val = x[:2400], x[2400:]
y_train, y_val = labels[:2400], labels[2400:]

encoder = nn.Sequential(nn.Linear(n_features, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())


class FeatureClassifier(nn.Module):
    def __init__(self, encoder, classes):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(256, classes)

    def forward(self, x):
        return self.head(self.encoder(x))


model = FeatureClassifier(encoder, 6)
for p in model.encoder.parameters():
    p.requires_grad = False
optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=1e-2)
criterion = nn.CrossEntropyLoss()
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)

for epoch in range(6):
    model.train()
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_val)
        val_loss = -logits.log_softmax(-1).gather(1, y_val[:, None]).mean().item()
        val_acc = (logits.argmax(1) == y_val).float().mean().item()
    print(f"epoch {epoch}: val loss {val_loss:.3f} acc {val_acc:.3f}")
