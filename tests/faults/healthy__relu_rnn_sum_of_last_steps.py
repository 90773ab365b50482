"""Sequence regression: predict the sum of the last ten values of an 80-step sequence with a
one-layer ReLU RNN (64 hidden) read at its last step; orthogonal recurrent weights scaled by 0.9,
Adam at lr 1e-3 with gradient clipping at 1, mini-batches of 32.

planted: kind=none cause=none
"""
import torch
import torch.nn as nn

torch.manual_seed(6)
torch.set_num_threads(1)

T, N = 80, 1024
X = torch.randn(N, T, 4)
y = X[:, -10:, 0].sum(1)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 64, batch_first=True, nonlinearity="relu")
        self.fc = nn.Linear(64, 1)
        for name, p in self.rnn.named_parameters():
            if "weight_hh" in name:
                nn.init.orthogonal_(p, gain=0.9)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1]).squeeze(-1)


model = Model()
criterion = nn.MSELoss()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for it in range(300):
    idx = torch.randint(0, N, (32,))
    loss = criterion(model(X[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if it % 50 == 0:
        print(it, loss.item())
