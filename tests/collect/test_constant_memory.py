"""Monitoring 2,000 steps does not grow memory beyond the monitor's bounded buffers."""

import gc
import tracemalloc

import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.memory import RssReader
from modeldebug.collect.session import watch


def test_memory_stays_flat_over_2000_monitored_steps(store_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    rss = RssReader()
    marks = {}

    def train(n):
        for _ in range(n):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    # every=1: the most the monitor ever holds; 20 steps a flush keeps the store's buffer small.
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        train(400)  # warm up allocators, caches and the store's first pages
        gc.collect()
        tracemalloc.start()
        for mark in ("start", "middle", "end"):
            if mark != "start":
                train(800)
            dbg.store.flush()
            gc.collect()
            marks[mark] = (tracemalloc.get_traced_memory()[0], rss())
        tracemalloc.stop()
    first = marks["middle"][0] - marks["start"][0]
    second = marks["end"][0] - marks["middle"][0]
    rss_growth = marks["end"][1] - marks["start"][1]
    print(f"python heap growth {first / 1e3:.0f} kB then {second / 1e3:.0f} kB; rss growth {rss_growth / 1e6:.1f} MB")
    # Bounded: the store flushes its batches, the metrics window is a deque of 256 records.
    assert first < 500_000 and second < 100_000
    assert rss_growth < 30_000_000
    assert dbg.evidence().steps.step[-1] == 1999
    assert dbg.monitor_overhead().peak_memory_bytes < 1_000_000
