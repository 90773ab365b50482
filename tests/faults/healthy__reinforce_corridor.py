"""REINFORCE on a small hand-made environment (a corridor of 8 cells: start in the middle, +1 for
reaching the right end, -1 for the left end, -0.01 a step, 20 steps at most), in the style of the
PyTorch examples' reinforce.py: a two-layer policy over one-hot states, discounted returns
normalised per episode, loss = -sum(log_prob * return), Adam 1e-2, 300 episodes, running reward
printed.

planted: kind=none cause=none
"""
import torch
from torch import nn
from torch.distributions import Categorical

torch.manual_seed(0)
torch.set_num_threads(1)
N_CELLS, MAX_STEPS, GAMMA = 8, 20, 0.99


class Corridor:
    def reset(self):
        self.pos, self.t = N_CELLS // 2, 0
        return self.pos

    def step(self, action):
        self.pos += 1 if action == 1 else -1
        self.t += 1
        if self.pos >= N_CELLS - 1:
            return self.pos, 1.0, True
        if self.pos <= 0:
            return self.pos, -1.0, True
        return self.pos, -0.01, self.t >= MAX_STEPS


class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_CELLS, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x):
        return torch.softmax(self.net(x), dim=-1)


env, policy = Corridor(), Policy()
optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
eye = torch.eye(N_CELLS)
running = 0.0
for episode in range(300):
    state, log_probs, rewards, done = env.reset(), [], [], False
    while not done:
        dist = Categorical(policy(eye[state]))
        action = dist.sample()
        log_probs.append(dist.log_prob(action))
        state, reward, done = env.step(action.item())
        rewards.append(reward)
    returns, g = [], 0.0
    for r in reversed(rewards):
        g = r + GAMMA * g
        returns.insert(0, g)
    returns = torch.tensor(returns)
    returns = (returns - returns.mean()) / (returns.std() + 1e-6) if len(returns) > 1 else returns
    loss = -(torch.stack(log_probs) * returns).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    running = 0.05 * sum(rewards) + 0.95 * running
    if episode % 50 == 0:
        print(f"episode {episode} running reward {running:.3f}")
print(f"final running reward {running:.3f}")
