"""Healthy: small transformer encoder (2 layers, 4 heads, d_model 64) that classifies token sequences:
which of four marker tokens occurs most often in a sequence of 24 tokens from a vocabulary of 50.
AdamW with a StepLR schedule (halve the learning rate every 2 epochs), DataLoader, 6 epochs.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

VOCAB, LENGTH, MARKERS = 50, 24, 4


def make_sequences(n):
    tokens = torch.randint(MARKERS, VOCAB, (n, LENGTH))
    marker_mask = torch.rand(n, LENGTH) < 0.4
    tokens[marker_mask] = torch.randint(0, MARKERS, (int(marker_mask.sum()),))
    counts = torch.stack([(tokens == m).sum(1) for m in range(MARKERS)], 1).float()
    return tokens, (counts + 0.01 * torch.rand_like(counts)).argmax(1)


class TokenClassifier(nn.Module):
    def __init__(self, d_model=64):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.zeros(1, LENGTH, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=128, dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(d_model, MARKERS)

    def forward(self, tokens):
        h = self.encoder(self.embed(tokens) + self.pos)
        return self.head(h.mean(1))


train_loader = DataLoader(TensorDataset(*make_sequences(1500)), batch_size=64, shuffle=True)
val_tokens, val_labels = make_sequences(500)
model = TokenClassifier()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
criterion = nn.CrossEntropyLoss()

for epoch in range(6):
    model.train()
    epoch_loss = 0.0
    for tokens, labels in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(tokens), labels)
        loss.backward()
        optimizer.step()
        epoch_loss += loss.item()
    scheduler.step()
    model.eval()
    with torch.no_grad():
        logits = model(val_tokens)
        val_loss = criterion(logits, val_labels).item()
        val_acc = (logits.argmax(1) == val_labels).float().mean().item()
    print(f"epoch {epoch} loss {epoch_loss / len(train_loader):.4f} val loss {val_loss:.4f} "
          f"val acc {val_acc:.3f} lr {optimizer.param_groups[0]['lr']:.2e}")
