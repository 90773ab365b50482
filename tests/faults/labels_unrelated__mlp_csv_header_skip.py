"""Customer-segment classifier from two CSV exports: one file with 16 numeric features per row,
one with the segment label (4 segments) per row, read with the same small CSV helper and zipped
into a Dataset. MLP with SiLU activations, Adagrad, DataLoader, validation every epoch.

planted: kind=labels_unrelated cause=label_problem
"""
import io

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, random_split

torch.manual_seed(0)
torch.set_num_threads(1)


def export_tables(n=4000):
    x = torch.randn(n, 16)
    segment = (x[:, :4] + 0.3 * torch.randn(n, 4)).argmax(1)
    features_csv = "\n".join(",".join(f"{v:.5f}" for v in row.tolist()) for row in x)
    labels_csv = "segment\n" + "\n".join(str(int(s)) for s in segment)
    return io.StringIO(features_csv), io.StringIO(labels_csv)


def read_csv(handle, skip_header=True):
    lines = handle.read().strip().splitlines()
    if skip_header:
        lines = lines[1:]
    return [[float(v) for v in line.split(",")] for line in lines]


class SegmentDataset(Dataset):
    def __init__(self, feature_file, label_file):
        rows = read_csv(feature_file)
        targets = read_csv(label_file)
        pairs = list(zip(rows, targets))
        self.x = torch.tensor([p[0] for p in pairs])
        self.y = torch.tensor([int(p[1][0]) for p in pairs])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


dataset = SegmentDataset(*export_tables())
train_set, val_set = random_split(dataset, [3200, len(dataset) - 3200])
train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
val_loader = DataLoader(val_set, batch_size=400)

model = nn.Sequential(nn.Linear(16, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 4))
optimizer = torch.optim.Adagrad(model.parameters(), lr=0.05)
criterion = nn.CrossEntropyLoss()

for epoch in range(6):
    model.train()
    for x, y in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_loss = sum(criterion(model(x), y).item() * len(y) for x, y in val_loader) / len(val_set)
    print(f"epoch {epoch} last batch loss {loss.item():.4f} val loss {val_loss:.4f}")
