"""MLP classifier ending in nn.Softmax, trained with nn.CrossEntropyLoss (which applies log_softmax
itself): the loss sees probabilities as logits, its gradient is squashed, and it barely moves.

planted: kind=wrong_loss_input cause=wrong_loss_function
"""
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(4096, 30)
y = X[:, :10].argmax(1)

model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=1))  # fault: Softmax + CE
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
criterion = nn.CrossEntropyLoss()

for step in range(300):
    i = torch.randint(0, len(X), (64,))
    optimizer.zero_grad()
    loss = criterion(model(X[i]), y[i])
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.4f}")
