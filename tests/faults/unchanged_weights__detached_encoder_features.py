"""Two-part model: a CNN encoder and an MLP classifier. The training loop calls .detach() on the
encoder's features (copied from an evaluation snippet), so no gradient ever reaches the encoder.

planted: kind=unchanged_weights cause=detached_graph
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

encoder = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
classifier = nn.Sequential(nn.Linear(8 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.SGD(list(encoder.parameters()) + list(classifier.parameters()), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()

X = torch.randn(2048, 1, 12, 12)
y = (X[:, 0, :6].mean((1, 2)) > 0).long()

for step in range(200):
    i = torch.randint(0, len(X), (64,))
    features = encoder(X[i]).detach()  # fault: cuts the graph between the encoder and the loss
    loss = criterion(classifier(features), y[i])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.4f} encoder grad: {encoder[0].weight.grad}")
