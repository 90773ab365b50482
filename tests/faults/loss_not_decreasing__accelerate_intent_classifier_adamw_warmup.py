"""Intent classifier: 64 intents, utterances of 12 token ids (vocabulary 400), a mean-pooled
embedding and a two-layer MLP, trained with accelerate: AdamW with linear warm-up and decay,
gradients accumulated over two batches, a held-out accuracy after each epoch.

planted: kind=loss_not_decreasing cause=learning_rate_too_high
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from accelerate import Accelerator

torch.manual_seed(0)
torch.set_num_threads(1)

intents, vocab, length = 64, 400, 12
keywords = torch.randint(0, vocab, (intents, 3))


def utterances(n):
    label = torch.randint(0, intents, (n,))
    tokens = torch.randint(0, vocab, (n, length))
    tokens[:, :3] = keywords[label]
    return tokens[:, torch.randperm(length)], label


train_x, train_y = utterances(6000)
val_x, val_y = utterances(1000)
loader = DataLoader(TensorDataset(train_x, train_y), batch_size=32, shuffle=True)


class IntentModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, 64)
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, intents))

    def forward(self, tokens):
        return self.mlp(self.embed(tokens).mean(1))


model = IntentModel()
optimizer = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.01)
epochs, accumulation = 3, 2
total = epochs * len(loader) // accumulation
scheduler = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: min(1.0, (s + 1) / 30) * max(0.0, (total - s) / total))
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
criterion = nn.CrossEntropyLoss()

for epoch in range(epochs):
    model.train()
    for tokens, label in loader:
        with accelerator.accumulate(model):
            loss = criterion(model(tokens), label)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
    print(f"epoch {epoch} loss {loss.item():.3f} val accuracy {accuracy:.3f}")
