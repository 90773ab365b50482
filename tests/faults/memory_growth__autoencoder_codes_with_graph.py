"""Autoencoder whose loop also collects the latent codes of every batch for a later plot, by
calling the encoder again without torch.no_grad() or .detach(): each stored code keeps its graph
and the encoder's activations alive, so memory grows batch after batch.

planted: kind=memory_growth cause=graph_kept_alive
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)

X = torch.randn(8192, 128)
loader = DataLoader(TensorDataset(X), batch_size=128, shuffle=True)
encoder = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 32))
decoder = nn.Sequential(nn.ReLU(), nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 128))
model = nn.Sequential(encoder, decoder)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()

codes = []
for epoch in range(4):
    for (xb,) in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), xb)
        loss.backward()
        optimizer.step()
        codes.append(encoder(xb))  # fault: should be under torch.no_grad() (or .detach().cpu())
    print(f"epoch {epoch} loss {loss.item():.4f} stored {len(codes)} code batches")
