"""Small transformer encoder that reads sequences of 16 tokens (vocabulary of 12) and predicts
whether token 3 occurs more often than token 7. Learned positional embeddings, two encoder layers,
mean pooling, AdamW with linear warmup then constant lr; a train()/evaluate() pair, evaluation on
a held-out set after every epoch.

planted: kind=weight_decay_too_high cause=weight_decay_too_high
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

VOCAB, LENGTH = 12, 16


def make_tokens(n):
    tokens = torch.randint(0, VOCAB, (n, LENGTH))
    return tokens, ((tokens == 3).sum(1) > (tokens == 7).sum(1)).long()


class CountTransformer(nn.Module):
    def __init__(self, d_model=32, heads=4, layers=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.zeros(1, LENGTH, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d_model, 2)

    def forward(self, tokens):
        h = self.encoder(self.embed(tokens) + self.pos)
        return self.head(h.mean(1))


def train(model, optimizer, scheduler, x, y, batch_size=64):
    model.train()
    order = torch.randperm(len(x))
    total = 0.0
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    logits = model(x)
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


train_x, train_y = make_tokens(3072)
test_x, test_y = make_tokens(512)
model = CountTransformer()
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=10.0)
warmup = 50
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

for epoch in range(6):
    train_loss = train(model, optimizer, scheduler, train_x, train_y)
    test_loss, test_acc = evaluate(model, test_x, test_y)
    print(f"epoch {epoch} train {train_loss:.4f} test {test_loss:.4f} acc {test_acc:.3f}")
