"""Sequence regression: predict the sum of the last ten values of an 80-step sequence with a
one-layer ReLU RNN (64 hidden) read at its last step; the recurrent weights drawn from N(0, 0.25),
SGD at lr 0.01 on mini-batches of 32.

planted: kind=nan_or_inf cause=bad_weight_init
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
                nn.init.normal_(p, 0, 0.25)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1]).squeeze(-1)


model = Model()
criterion = nn.MSELoss()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for it in range(150):
    idx = torch.randint(0, N, (32,))
    loss = criterion(model(X[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if it % 25 == 0:
        print(it, loss.item())
