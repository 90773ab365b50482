"""Part-of-speech-style token tagger on synthetic sentences of varying length (5-20 tokens, a
vocabulary of 400 words each with a preferred tag among 12): padded batches from a collate_fn,
embedding + bidirectional LSTM + linear tag head, log_softmax + NLLLoss over the flattened
tokens with padding labels set to -100, packed-free (the LSTM runs over the padding), Adam 2e-3 with a linear
decay to zero over the run (LambdaLR stepped per batch), 5 epochs, token accuracy on a dev set
counting real tokens only.

planted: kind=wrong_loss_input cause=wrong_loss_function
"""
import random

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)
VOCAB, TAGS, PAD = 400, 12, 0
word_tag = torch.randint(0, TAGS, (VOCAB,))


def sentence():
    words = torch.randint(1, VOCAB, (random.randint(5, 20),))
    tags = word_tag[words].clone()
    flip = torch.rand(len(words)) < 0.1
    tags[flip] = torch.randint(0, TAGS, (int(flip.sum()),))
    return words, tags


train, dev = [sentence() for _ in range(2000)], [sentence() for _ in range(300)]


def collate(batch):
    words = pad_sequence([w for w, _ in batch], batch_first=True, padding_value=PAD)
    tags = pad_sequence([t for _, t in batch], batch_first=True, padding_value=-100)
    return words, tags


train_loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate)
dev_loader = DataLoader(dev, batch_size=100, collate_fn=collate)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 64, padding_idx=PAD)
        self.lstm = nn.LSTM(64, 64, batch_first=True, bidirectional=True)
        self.head = nn.Linear(128, TAGS)

    def forward(self, words):
        out, _ = self.lstm(self.emb(words))
        return torch.log_softmax(self.head(out), dim=1)


model = Tagger()
EPOCHS = 5
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
total_steps = EPOCHS * len(train_loader)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total_steps))
criterion = nn.NLLLoss(ignore_index=-100)
for epoch in range(EPOCHS):
    model.train()
    for words, tags in train_loader:
        logits = model(words)
        loss = criterion(logits.view(-1, TAGS), tags.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for words, tags in dev_loader:
            pred = model(words).argmax(-1)
            mask = tags != -100
            correct += (pred[mask] == tags[mask]).sum().item()
            total += mask.sum().item()
    print(f"epoch {epoch} loss {loss.item():.3f} dev acc {correct / total:.3f}")
