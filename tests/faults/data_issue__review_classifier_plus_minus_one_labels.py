"""Binary review classifier on sparse bag-of-words features (100 words, 5% present): the labels
come from the source file as -1/+1 and go straight into BCEWithLogitsLoss. An MLP, Adam 1e-3, 5
epochs of shuffled mini-batches of 64. The loss has no minimum for a target of -1: plain python's
loss goes 0.31, 0.09, -3.2, -7.6 by epoch, the logits running off to infinity.

planted: kind=data_issue cause=label_problem
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

n, vocabulary = 4000, 100
bags = (torch.rand(n, vocabulary) < 0.05).float()
word_weights = torch.randn(vocabulary)
sentiment = torch.where(bags @ word_weights > 0, 1.0, -1.0)

model = nn.Sequential(nn.Linear(vocabulary, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.BCEWithLogitsLoss()
for epoch in range(5):
    order = torch.randperm(n)
    for i in range(0, n, 64):
        batch = order[i:i + 64]
        loss = criterion(model(bags[batch]).squeeze(1), sentiment[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.3f}")
