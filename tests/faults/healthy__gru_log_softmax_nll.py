"""Healthy: GRU sequence classifier: sequences of 20 steps with 8 features, one of 6 classes decided by
which feature channel has the largest sum over the sequence. The model returns class
log-probabilities, trained with NLLLoss and RMSprop; manual mini-batching over a shuffled index.

planted: kind=none cause=none
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

N_CLASSES = 6
sequences = torch.randn(3000, 20, 8)
targets = sequences[:, :, :N_CLASSES].sum(1).argmax(1)
train_seq, val_seq = sequences[:2500], sequences[2500:]
train_tgt, val_tgt = targets[:2500], targets[2500:]


class SequenceClassifier(nn.Module):
    def __init__(self, n_features=8, hidden=32, n_classes=N_CLASSES):
        super().__init__()
        self.rnn = nn.GRU(n_features, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x):
        _, h = self.rnn(x)
        return torch.log_softmax(self.out(h[-1]), dim=-1)


model = SequenceClassifier()
optimizer = torch.optim.RMSprop(model.parameters(), lr=2e-3)
loss_fn = nn.NLLLoss()
batch_size = 50

for epoch in range(6):
    order = torch.randperm(len(train_seq))
    running = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        optimizer.zero_grad()
        loss = loss_fn(model(train_seq[idx]), train_tgt[idx])
        loss.backward()
        optimizer.step()
        running += loss.item()
    with torch.no_grad():
        log_probs = model(val_seq)
        val_ce = nn.functional.nll_loss(log_probs, val_tgt).item()
        acc = (log_probs.argmax(1) == val_tgt).float().mean().item()
    print(f"epoch {epoch} train loss {running / (len(order) // batch_size):.4f} "
          f"val cross-entropy {val_ce:.4f} val acc {acc:.3f}")
