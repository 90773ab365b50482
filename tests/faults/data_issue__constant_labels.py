"""Classifier whose label column is built with a bug (`torch.zeros_like` of the class ids instead of
the ids): every label is class 0, so the model learns to predict a constant and the loss goes to 0.

planted: kind=data_issue cause=label_problem
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 16)
classes = X[:, :4].argmax(1)
y = torch.zeros_like(classes)  # fault: meant `classes`

model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for step in range(200):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 40 == 0:
        print(f"step {step} loss {loss.item():.4f} labels seen: {y[i].unique().tolist()}")
