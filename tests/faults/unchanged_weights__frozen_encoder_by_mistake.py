"""Transformer classifier: the embedding and encoder are frozen with requires_grad_(False) (meant
only for a warm-up phase that was never undone), yet they were given to the optimizer.
Only the head trains.

planted: kind=unchanged_weights cause=frozen_parameters
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)


class TinyTransformer(nn.Module):
    def __init__(self, vocab=50, d=32, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


X = torch.randint(0, 50, (2048, 16))
y = (X < 10).sum(1).clamp(max=2)

model = TinyTransformer()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model.embed.requires_grad_(False)  # fault: frozen for a warm-up that never ends
model.encoder.requires_grad_(False)
criterion = nn.CrossEntropyLoss()

for step in range(150):
    i = torch.randint(0, len(X), (32,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 30 == 0:
        print(f"step {step} loss {loss.item():.4f}")
