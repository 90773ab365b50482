"""GRU sequence classifier (is the running sum of a noisy 1-d signal positive at the end?), trained
by a small Trainer class that keeps an exponential moving average of the weights for evaluation.
AdamW with a cosine schedule, manual batching over shuffled indices, evaluation of the averaged
model every epoch.

planted: kind=none cause=none
"""
import copy

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)


def make_sequences(n, length=24):
    x = torch.randn(n, length, 1)
    return x, (x.sum(dim=(1, 2)) > 0).long()


class GRUClassifier(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.rnn = nn.GRU(1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.out(h[-1])


class Trainer:
    def __init__(self, model, epochs, steps_per_epoch, lr=3e-3, ema_decay=0.95):
        self.model = model
        self.ema_model = copy.deepcopy(model)
        self.ema_decay = ema_decay
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs * steps_per_epoch)
        self.criterion = nn.CrossEntropyLoss()

    @torch.no_grad()
    def update_ema(self):
        for avg, live in zip(self.ema_model.parameters(), self.model.parameters()):
            avg.mul_(self.ema_decay).add_(live, alpha=1 - self.ema_decay)

    def train_step(self, x, y):
        self.model.train()
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.update_ema()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, x, y):
        self.ema_model.eval()
        logits = self.ema_model(x)
        return self.criterion(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


train_x, train_y = make_sequences(2048)
val_x, val_y = make_sequences(512)
batch_size, epochs = 64, 6
steps = len(train_x) // batch_size
trainer = Trainer(GRUClassifier(), epochs, steps)

for epoch in range(epochs):
    order = torch.randperm(len(train_x))
    losses = []
    for b in range(steps):
        idx = order[b * batch_size:(b + 1) * batch_size]
        losses.append(trainer.train_step(train_x[idx], train_y[idx]))
    val_loss, val_acc = trainer.evaluate(val_x, val_y)
    print(f"epoch {epoch} train {sum(losses) / len(losses):.4f} val {val_loss:.4f} acc {val_acc:.3f}")
