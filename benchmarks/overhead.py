"""Overhead benchmark (issue 4): what watching a training run costs, next to the tools people use today.

Four parts, each printed as a table, with PASS/MISS per goal at the end:

1. Step time of four models (MLP, CNN with BatchNorm, LSTM, Transformer encoder; 10-50 ms a plain
   step on one CPU thread) under: plain training; modeldebug at its default; modeldebug with every
   statistic every step; wandb.watch(log="all") at log_freq 1 and 100 (offline); TensorBoard
   histograms of every parameter and gradient every step; torch.autograd.detect_anomaly.
   Every configuration has its own copy of the model and optimizer (same init); they run
   interleaved in rounds (a chunk of steps of each, in a shuffled order per round), every step
   timed with perf_counter. Ratios are to plain: of the medians, and of the means (the mean
   includes the rare expensive steps: modeldebug's sampled steps, wandb's every-100th). For
   modeldebug the "amortized" ratio is median(unsampled) and median(sampled) weighted by the
   fraction of steps sampled: what a long run pays, without the machine's noise in it.
   Each modeldebug configuration keeps one Debugger alive for the whole benchmark, paused while the
   other configurations run (its adaptive schedule and warm-up happen once, as in a real run).
2. End to end: `python -m modeldebug run -- python script.py` against `python script.py`
   (wall time including start-up and the diagnosis), and `python -c "import torch"` for scale.
3. A long run (10,000 steps, 100 layers) under watch() at the default: the monitor's Python heap at
   the end and at its peak (tracemalloc, allocations with a modeldebug frame on their stack), the
   device tensors it says it held (monitor_overhead().peak_memory_bytes), RSS growth.
4. Analysing that run: store.load_evidence, rules.run_rules, analysis.analyze, timed separately.

    python benchmarks/overhead.py                  # everything, about 10 minutes on 2 cores
    python benchmarks/overhead.py --quick          # a couple of minutes
    python benchmarks/overhead.py --models mlp,cnn --only plain,md-default,md-every --parts steps
    python benchmarks/overhead.py --parts short    # sub-millisecond CPU steps (mlp3, stack13), us per step
    python benchmarks/overhead.py --parts counts   # an unsampled step's bytecodes and calls (load-independent)
    python benchmarks/overhead.py --profile lstm   # cProfile of modeldebug's own functions
    python benchmarks/overhead.py --json out.json

OMP_NUM_THREADS is set to 1 before torch is imported (machines here are shared 2-core boxes).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import copy  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import modeldebug as md  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
GOALS = {
    "default": 1.03,  # modeldebug at its default, every model
    "short": 1.05,  # modeldebug at its default on sub-millisecond CPU steps (issue 17)
    "unsampled_us": 50.0,  # the monitor's host time on an unsampled step of the 13-module stack
    "every": 1.5,  # every statistic every step, every model
    "startup_s": 0.5,  # `modeldebug run` start-up beyond `python script.py`
    "analysis_s": 1.0,  # rules on a 10,000-step, 100-layer run
}

# ---------------------------------------------------------------------------------------- models


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class LSTMClassifier(nn.Module):
    def __init__(self, vocab=1000, dim=128, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


class TransformerClassifier(nn.Module):
    def __init__(self, vocab=1000, dim=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def _mlp():
    model = nn.Sequential(
        nn.Linear(512, 768), nn.ReLU(), nn.Linear(768, 768), nn.ReLU(),
        nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 10),
    )
    return model, torch.randn(128, 512), torch.randint(0, 10, (128,))


def _cnn():
    return CNN(), torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))


def _lstm():
    return LSTMClassifier(), torch.randint(0, 1000, (32, 32)), torch.randint(0, 10, (32,))


def _transformer():
    return TransformerClassifier(), torch.randint(0, 1000, (16, 24)), torch.randint(0, 10, (16,))


def _mlp3():
    """Short steps (issue 17): a 3-module MLP, sub-millisecond on one CPU thread."""
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    return model, torch.randn(64, 128), torch.randint(0, 10, (64,))


def _stack13():
    """Short steps: 13 modules (7 Linear 64x64, 6 ReLU), about a millisecond: what grows with modules."""
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10)), torch.randn(64, 64), torch.randint(0, 10, (64,))


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "lstm": _lstm,
    "transformer": _transformer,
    "mlp3": _mlp3,
    "stack13": _stack13,
}
LONG_STEP_MODELS = ("mlp", "cnn", "lstm", "transformer")
SHORT_STEP_MODELS = ("mlp3", "stack13")

# ---------------------------------------------------------------------------------------- configs


@dataclass
class Case:
    """One configuration on one model: its own model copy, optimizer and timings."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: nn.Module
    times: list[float] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    monitor_s: float = 0.0  # modeldebug's own monitor time during the timed steps
    monitor_step_s: list[float] = field(default_factory=list)  # ... per timed step (CPU)
    setup_s: float = 0.0
    dbg: Any = None
    extra: Any = None  # wandb run / SummaryWriter

    def step(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def work(self) -> None:
        """One step as the user's loop runs it: on CPU reading the loss each step (free there),
        on CUDA never waiting for the device (the loop a GPU user tunes for)."""
        loss = self.step()
        if not loss.is_cuda:
            loss.item()

    # Per configuration: what surrounds a chunk of steps, and each step.
    def begin_chunk(self) -> None:
        pass

    def end_chunk(self) -> None:
        pass

    def timed_step(self, record: bool) -> None:
        t = time.perf_counter()
        self.work()
        dt = time.perf_counter() - t
        if record:
            self.times.append(dt)
            self.sampled.append(False)

    def timed_chunk(self, n: int, record: bool) -> None:
        """CUDA: n steps timed together between two synchronisations (a step alone is not
        timeable without a sync of its own); one entry, the mean step, per chunk."""
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            self.work()
        torch.cuda.synchronize()
        if record:
            self.times.append((time.perf_counter() - t) / n)
            self.sampled.append(False)

    def close(self) -> None:
        pass


class Plain(Case):
    pass


class ModelDebug(Case):
    def begin_chunk(self) -> None:
        self.dbg.resume()

    def end_chunk(self) -> None:
        self.dbg.pause()

    def timed_step(self, record: bool) -> None:
        before = self.dbg.monitor_overhead()
        super().timed_step(record)
        after = self.dbg.monitor_overhead()  # on CPU a step's scalars resolve as it closes
        if record:
            self.sampled[-1] = after.sampled_steps > before.sampled_steps
            self.monitor_s += after.monitor_time_s - before.monitor_time_s
            self.monitor_step_s.append(after.monitor_time_s - before.monitor_time_s)

    def timed_chunk(self, n: int, record: bool) -> None:
        before = self.dbg.monitor_overhead()
        super().timed_chunk(n, record)
        if record:
            self.monitor_s += (self.dbg.monitor_overhead().monitor_time_s - before.monitor_time_s) / n

    def close(self) -> None:
        self.dbg.stop()


class Wandb(Case):
    def work(self) -> None:
        import wandb

        loss = self.step()
        wandb.log({f"{self.name}/loss": loss.item()})  # histograms are committed with the user's log

    def close(self) -> None:
        import wandb

        wandb.unwatch(self.model)


class TensorBoard(Case):
    n = 0

    def work(self) -> None:
        loss = self.step()
        w, self.n = self.extra, self.n + 1
        w.add_scalar("loss", loss.item(), self.n)
        for pname, p in self.model.named_parameters():
            w.add_histogram(pname, p, self.n)
            if p.grad is not None:
                w.add_histogram(pname + ".grad", p.grad, self.n)

    def close(self) -> None:
        self.extra.close()


class Anomaly(Case):
    def step(self) -> torch.Tensor:
        with torch.autograd.detect_anomaly(check_nan=True):
            return super().step()


class Floor(Case):
    """The mechanisms the default monitor rests on, each doing nothing but pass through (installed
    for its chunk only, as modeldebug is resumed for its own): what an unsampled step costs before
    any of our logic runs. ``parts``: which of them (see FLOOR_PARTS)."""

    parts: tuple[str, ...] = ()

    def begin_chunk(self) -> None:
        self._undo: list[Callable[[], None]] = []
        for part in self.parts:
            getattr(self, "_" + part)()

    def end_chunk(self) -> None:
        for undo in reversed(self._undo):
            undo()

    def _root(self) -> None:  # the two root-module hooks, as kept all run
        handles = [self.model.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True),
                   self.model.register_forward_hook(lambda m, a, o: None, always_call=True)]
        self._undo += [h.remove for h in handles]

    def _optimizer(self) -> None:  # the global optimizer step pre- and post-hooks
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        handles = [register_optimizer_step_pre_hook(lambda o, a, k: None),
                   register_optimizer_step_post_hook(lambda o, a, k: None)]
        self._undo += [h.remove for h in handles]

    def _patches(self) -> None:  # pass-through wrappers where modeldebug patches the loop's calls
        import functools

        import torch.nn.functional as F

        for owner, name in ((torch.Tensor, "backward"), (torch.optim.Optimizer, "zero_grad"), (F, "cross_entropy")):
            original = getattr(owner, name)

            def make(original=original):
                @functools.wraps(original)
                def passthrough(*args, **kwargs):
                    return original(*args, **kwargs)
                return passthrough

            setattr(owner, name, make())
            self._undo.append(lambda owner=owner, name=name, original=original: setattr(owner, name, original))

    def _reads(self) -> None:
        """What the step's row needs of the tensors: modeldebug's fused gradient norm before the
        update, then the loss and that norm read as floats, and a clock at each boundary."""
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        from modeldebug.collect.params import FLATTEN_BELOW, grad_norm

        params = list(self.model.parameters())
        flat = sum(p.numel() for p in params) < FLATTEN_BELOW * len(params)
        held: dict[str, Any] = {}
        clock = time.perf_counter

        def pre(o, a, k):
            held["t"] = clock()
            held["norm"] = grad_norm(params, flat)

        def post(o, a, k):
            held["row"] = (float(held["norm"]), clock() - held["t"], clock())

        handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        self._undo += [h.remove for h in handles]


FLOOR_PARTS = {
    "floor-root": ("root",),
    "floor-optimizer": ("optimizer",),
    "floor-patches": ("patches",),
    "floor-reads": ("reads",),
    "floor-all": ("root", "optimizer", "patches", "reads"),
}
FLOOR_CLASSES = {name: type(name, (Floor,), {"parts": parts}) for name, parts in FLOOR_PARTS.items()}


# name -> (class, relative chunk size: slow tools run fewer steps per round)
CONFIGS: dict[str, tuple[type[Case], float]] = {
    "plain": (Plain, 1.0),
    "md-default": (ModelDebug, 1.0),
    "md-every": (ModelDebug, 1.0),
    "wandb-1": (Wandb, 0.25),
    "wandb-100": (Wandb, 1.0),
    "tb-hist": (TensorBoard, 0.15),
    "anomaly": (Anomaly, 0.5),
    **{name: (cls, 1.0) for name, cls in FLOOR_CLASSES.items()},
}
LABELS = {
    "plain": "plain training",
    "md-default": "modeldebug default",
    "md-every": "modeldebug every stat every step",
    "wandb-1": 'wandb.watch(log="all", log_freq=1)',
    "wandb-100": 'wandb.watch(log="all", log_freq=100)',
    "tb-hist": "TensorBoard histograms every step",
    "anomaly": "torch.autograd.detect_anomaly",
    "floor-root": "no-op root pre- and post-hooks",
    "floor-optimizer": "no-op optimizer step pre- and post-hooks",
    "floor-patches": "pass-through backward, zero_grad, cross_entropy",
    "floor-reads": "fused grad norm, its float and clocks",
    "floor-all": "all four: the design's floor",
}


def make_case(name: str, base: nn.Module, x, y, tmp: Path, model_name: str) -> Case:
    cls, _ = CONFIGS[name]
    t = time.perf_counter()
    model = copy.deepcopy(base)
    case = cls(name, model, torch.optim.Adam(model.parameters(), lr=1e-3), x, y, nn.CrossEntropyLoss())
    if name.startswith("md-"):
        store = str(tmp / f"{model_name}-{name}.db")
        cfg = (
            md.DebuggingConfig(store_path=store)
            if name == "md-default"
            else md.DebuggingConfig(analysis_level="comprehensive", store_path=store)
        )
        case.dbg = md.watch(case.model, case.opt, config=cfg).start()
        case.dbg.pause()
    elif name.startswith("wandb-"):
        import wandb

        wandb.watch(case.model, log="all", log_freq=int(name.split("-")[1]))
    elif name == "tb-hist":
        from torch.utils.tensorboard import SummaryWriter

        case.extra = SummaryWriter(str(tmp / f"tb-{model_name}"))
    case.setup_s = time.perf_counter() - t
    return case


# ---------------------------------------------------------------------------------------- part 1


def median(v):
    return statistics.median(v) if v else float("nan")


def mean(v):
    return statistics.fmean(v) if v else float("nan")


def amortized(case: Case) -> float:
    """median(unsampled) and median(sampled) weighted by how often steps were sampled."""
    s = [t for t, k in zip(case.times, case.sampled) if k]
    u = [t for t, k in zip(case.times, case.sampled) if not k]
    if not s or not u:
        return median(case.times)
    f = len(s) / len(case.times)
    return (1 - f) * median(u) + f * median(s)


def scale_batch(base: nn.Module, x: torch.Tensor, y: torch.Tensor, target_ms: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """CUDA: repeat the batch (doubling) until a plain step takes ``target_ms`` (at most 1024x)."""
    model = copy.deepcopy(base)
    probe = Plain("probe", model, torch.optim.Adam(model.parameters(), lr=1e-3), x, y, nn.CrossEntropyLoss())
    k = 1
    while True:
        probe.x, probe.y = x.repeat(k, *([1] * (x.dim() - 1))), y.repeat(k)
        probe.timed_chunk(3, record=False)
        probe.timed_chunk(10, record=True)
        if probe.times[-1] * 1e3 >= target_ms or k >= 1024:
            break
        k *= 2
    del probe, model
    torch.cuda.empty_cache()
    return x.repeat(k, *([1] * (x.dim() - 1))), y.repeat(k), k


def bench_model(model_name: str, configs: list[str], rounds: int, chunk: int, warmup: int, tmp: Path,
                seed: int = 0, device: str = "cpu", target_ms: float = 0.0) -> dict:
    torch.manual_seed(seed)
    base, x, y = MODELS[model_name]()
    base, x, y = base.to(device), x.to(device), y.to(device)
    cuda = x.is_cuda
    batch_scale = 1
    if cuda and target_ms > 0:
        x, y, batch_scale = scale_batch(base, x, y, target_ms)
    cases = [make_case(c, base, x, y, tmp, model_name) for c in configs]

    def run(case: Case, n: int, record: bool) -> None:
        if cuda:
            case.timed_chunk(n, record)
        else:
            for _ in range(n):
                case.timed_step(record)

    started = time.perf_counter()
    for case in cases:  # warm-up: allocator, caches, modeldebug's schedule, wandb's first logs
        case.begin_chunk()
        run(case, max(2, int(round(warmup * CONFIGS[case.name][1]))), record=False)
        case.end_chunk()
    rng = random.Random(seed)
    spent = {c.name: 0.0 for c in cases}
    for _ in range(rounds):
        order = cases[:]
        rng.shuffle(order)
        for case in order:
            n = max(1, int(round(chunk * CONFIGS[case.name][1])))
            t = time.perf_counter()
            case.begin_chunk()
            run(case, n, record=True)
            case.end_chunk()
            spent[case.name] += time.perf_counter() - t
    out = {"model": model_name, "device": str(x.device), "batch_scale": batch_scale, "batch": x.shape[0],
           "params": sum(p.numel() for p in base.parameters()),
           "leaf_modules": sum(1 for m in base.modules() if next(m.children(), None) is None),
           "wall_s": time.perf_counter() - started, "configs": {}}
    plain = next((c for c in cases if c.name == "plain"), None)
    p_med, p_mean = (median(plain.times), mean(plain.times)) if plain else (float("nan"), float("nan"))
    for case in cases:
        r = {
            "steps": len(case.times),
            "median_ms": 1e3 * median(case.times),
            "mean_ms": 1e3 * mean(case.times),
            "ratio_median": median(case.times) / p_med,
            "ratio_mean": mean(case.times) / p_mean,
            "time_s": spent[case.name],
            "setup_s": case.setup_s,
        }
        if case.dbg is not None:
            r["ratio_amortized"] = amortized(case) / p_med
            r["sampled_frac"] = sum(case.sampled) / max(1, len(case.times))
            r["sampled_median_ms"] = 1e3 * median([t for t, k in zip(case.times, case.sampled) if k])
            # The monitor's host time per step (self-reported), on unsampled and on sampled steps,
            # and what the medians say an unsampled step costs beyond plain (hooks' call overhead included).
            own = list(zip(case.monitor_step_s, case.sampled))
            r["monitor_unsampled_us"] = 1e6 * median([m for m, k in own if not k])
            r["monitor_sampled_us"] = 1e6 * median([m for m, k in own if k])
            r["extra_unsampled_us"] = 1e6 * (median([t for t, k in zip(case.times, case.sampled) if not k]) - p_med)
            # The monitor's own accounting over its timed steps (harness-side: the paused time of
            # the other configurations is not in the denominator).
            r["self_fraction_timed"] = case.monitor_s / sum(case.times)
            # What the measured slowdown says the monitor cost, for comparison.
            r["measured_fraction"] = (sum(case.times) - p_mean * len(case.times)) / sum(case.times)
        out["configs"][case.name] = r
    for case in cases:
        case.close()
        if case.dbg is not None:
            ov = case.dbg.monitor_overhead()
            out["configs"][case.name]["reported_time_fraction"] = ov.time_fraction
            out["configs"][case.name]["reported_sampled_steps"] = ov.sampled_steps
            out["configs"][case.name]["reported_steps"] = case.dbg.step_count
    del cases
    gc.collect()
    return out


def print_steps(results: list[dict]) -> None:
    print("\n== Step time, ratio to plain (interleaved; median / mean / amortized) ==")
    print("Plain step: " + ", ".join(
        f"{r['model']} {r['configs']['plain']['median_ms']:.1f} ms ({r['params'] / 1e6:.2f}M params, "
        f"{r['leaf_modules']} leaf modules, batch {r['batch']})" for r in results if "plain" in r["configs"]))
    if any(r["device"] != "cpu" for r in results):
        print("(CUDA: each entry is the mean step of a chunk timed between two syncs; the loop never reads the loss)")
    names = [n for n in CONFIGS if any(n in r["configs"] for r in results)]
    models = [r["model"] for r in results]
    head = f"{'configuration':<38}" + "".join(f"{m:>22}" for m in models)
    print(head)
    print(f"{'':<38}" + "".join(f"{'median  mean  amort':>22}" for _ in models))
    for n in names:
        row = f"{LABELS[n]:<38}"
        for r in results:
            c = r["configs"].get(n)
            if c is None:
                row += f"{'-':>22}"
                continue
            am = f"{c['ratio_amortized']:.3f}" if "ratio_amortized" in c else "     "
            row += f"{c['ratio_median']:>8.3f}x{c['ratio_mean']:>6.2f}x {am:>5}"
        print(row)
    print("\nSteps timed per config (time spent, s) and modeldebug's own accounting:")
    for r in results:
        parts = [f"{n} {c['steps']} ({c['time_s']:.0f}s)" for n, c in r["configs"].items()]
        print(f"  {r['model']:<12} " + ", ".join(parts) + f"; model total {r['wall_s']:.0f}s")
        for n in ("md-default", "md-every"):
            c = r["configs"].get(n)
            if c is None:
                continue
            print(f"  {'':<12} {n}: sampled {100 * c['sampled_frac']:.1f}% of steps "
                  f"(sampled step {c['sampled_median_ms']:.1f} ms); self-reported monitor time "
                  f"{100 * c['self_fraction_timed']:.1f}% of its step time, measured slowdown "
                  f"{100 * c['measured_fraction']:.1f}%; monitor_overhead().time_fraction "
                  f"{100 * c['reported_time_fraction']:.2f}% (over wall time incl. paused); host time per step "
                  f"{c['monitor_unsampled_us']:.0f} us unsampled, {c['monitor_sampled_us']:.0f} us sampled")


def print_short(results: list[dict]) -> None:
    """Issue 17's table: sub-millisecond CPU steps, ratios and the monitor's microseconds per step."""
    print("\n== Short steps (interleaved): ratio to plain, and the monitor's host time per step ==")
    print(f"{'model':<10}{'modules':>8}{'plain ms':>10}{'config':>12}{'median':>9}{'mean':>8}{'amort':>8}"
          f"{'unsampled us':>14}{'sampled us':>12}{'extra us':>10}{'sampled %':>11}")
    for r in results:
        plain = r["configs"]["plain"]["median_ms"]
        for n, c in r["configs"].items():
            if n == "plain":
                continue
            print(f"{r['model']:<10}{r['leaf_modules']:>8}{plain:>10.3f}{n:>12}{c['ratio_median']:>8.3f}x"
                  f"{c['ratio_mean']:>7.2f}x{c.get('ratio_amortized', float('nan')):>8.3f}"
                  f"{c.get('monitor_unsampled_us', float('nan')):>14.1f}{c.get('monitor_sampled_us', float('nan')):>12.0f}"
                  f"{c.get('extra_unsampled_us', float('nan')):>10.1f}{100 * c.get('sampled_frac', 0):>10.1f}%")
    print("(unsampled/sampled us: the monitor's own clock per step, medians; extra us: median unsampled step "
          "minus median plain step, what the hooks' calls cost too)")


def print_floor(results: list[dict]) -> None:
    """What each mechanism costs alone, doing nothing, next to the default monitor: the part of an
    unsampled step's cost that no work inside our callbacks can remove."""
    print("\n== The floor (interleaved): each mechanism alone, a no-op, next to the default monitor ==")
    print(f"{'model':<10}{'plain ms':>10}  {'configuration':<50}{'median':>9}{'extra us':>10}")
    for r in results:
        cfg = r["configs"]
        plain = cfg["plain"]["median_ms"]
        for n, c in cfg.items():
            if n == "plain":
                continue
            print(f"{r['model']:<10}{plain:>10.3f}  {LABELS[n]:<50}{c['ratio_median']:>8.3f}x"
                  f"{1e3 * (c['median_ms'] - plain):>10.1f}")
        md_extra = 1e3 * (cfg["md-default"]["median_ms"] - plain)
        floor_extra = 1e3 * (cfg["floor-all"]["median_ms"] - plain)
        print(f"{'':<10}{'':>10}  {'default beyond the floor (our logic)':<50}{'':>9}{md_extra - floor_extra:>10.1f}")
    print("(extra us: median step minus median plain step; the floor's rows are not additive, each is "
          "measured alone and noise is a few us)")


# ---------------------------------------------------------------------------------------- part 2

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 768), nn.ReLU(), nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(128, 512), torch.randint(0, 10, (128,))
    for step in range({steps}):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(step, loss.item())
    """
)


def _wall(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return dt


def bench_e2e(repeats: int, tmp: Path, steps: int) -> dict:
    py = sys.executable
    work = tmp / "e2e"
    work.mkdir(exist_ok=True)
    env_cmds = {}
    out: dict[str, Any] = {"repeats": repeats}
    for label, n in (("startup", 5), ("train", steps)):
        script = work / f"{label}.py"
        script.write_text(SCRIPT.format(steps=n))
        env_cmds[label] = (
            [py, script.name],
            [py, "-m", "modeldebug", "run", "--store", "runs.db", "--", py, script.name],
        )
    times: dict[str, list[float]] = {k: [] for k in ("import_torch", "import_modeldebug_cli",
                                                      "startup_plain", "startup_md", "train_plain", "train_md")}
    _wall([py, "-c", "import torch"], work)  # warm the file cache once
    for _ in range(repeats):
        times["import_torch"].append(_wall([py, "-c", "import torch"], work))
        times["import_modeldebug_cli"].append(_wall([py, "-c", "import modeldebug.cli, modeldebug.runner"], work))
        for label in ("startup", "train"):
            plain, watched = env_cmds[label]
            times[f"{label}_plain"].append(_wall(plain, work))
            times[f"{label}_md"].append(_wall(watched, work))
    for k, v in times.items():
        out[k + "_s"] = median(v)
        out[k + "_all"] = v
    out["startup_extra_s"] = out["startup_md_s"] - out["startup_plain_s"]
    out["train_extra_s"] = out["train_md_s"] - out["train_plain_s"]
    out["train_steps"] = steps
    return out


def print_e2e(e: dict) -> None:
    print(f"\n== End to end (medians of {e['repeats']} alternated runs, wall time) ==")
    print(f"  python -c 'import torch'                         {e['import_torch_s']:.2f} s")
    print(f"  python -c 'import modeldebug.cli, .runner'       {e['import_modeldebug_cli_s']:.2f} s")
    print(f"  5-step script:    python {e['startup_plain_s']:.2f} s, modeldebug run {e['startup_md_s']:.2f} s "
          f"-> +{e['startup_extra_s']:.2f} s")
    print(f"  {e['train_steps']}-step script: python {e['train_plain_s']:.2f} s, modeldebug run {e['train_md_s']:.2f} s "
          f"-> +{e['train_extra_s']:.2f} s ({e['train_md_s'] / e['train_plain_s']:.2f}x)")


# ---------------------------------------------------------------------------------------- part 3, 4


def deep_mlp(pairs: int = 50, width: int = 32) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(pairs):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def _md_heap(snapshot: tracemalloc.Snapshot) -> int:
    src = str(Path(md.__file__).parent)
    flt = tracemalloc.Filter(True, src + "/*", all_frames=True)
    return sum(s.size for s in snapshot.filter_traces([flt]).statistics("filename"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_long(steps: int, tmp: Path, checkpoints: int = 10) -> dict:
    torch.manual_seed(0)
    model = deep_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.MSELoss()
    x, y = torch.randn(64, 32), torch.randn(64, 32)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(20):  # plain warm-up: the allocator and torch's caches, before any baseline
        step()
    gc.collect()
    rss0 = _rss()
    t = time.perf_counter()
    for _ in range(200):
        step()
    plain_step_s = (time.perf_counter() - t) / 200

    # One frame per trace: deeper tracebacks make each step 4x slower here. The monitor's heap is
    # counted two ways: allocations made in modeldebug's files, and the growth of the whole traced
    # heap over its level before watch() (the plain loop itself holds nothing that grows).
    tracemalloc.start(1)
    for _ in range(20):
        step()
    gc.collect()
    base_traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    store = tmp / "long.db"
    cfg = md.DebuggingConfig(store_path=str(store))
    every = max(1, steps // checkpoints)
    heap: list[tuple[int, int, int, int]] = []  # (step, modeldebug heap, traced heap over base, rss)
    dbg = md.watch(model, opt, config=cfg)
    t0 = time.perf_counter()
    snap_s = 0.0
    with dbg:
        for i in range(1, steps + 1):
            step()
            if i % every == 0 or i == 100:
                ts = time.perf_counter()
                snap = tracemalloc.take_snapshot()
                heap.append((i, _md_heap(snap), tracemalloc.get_traced_memory()[0] - base_traced, _rss()))
                del snap
                snap_s += time.perf_counter() - ts
    run_s = time.perf_counter() - t0 - snap_s
    traced_peak = tracemalloc.get_traced_memory()[1] - base_traced
    gc.collect()
    snap = tracemalloc.take_snapshot()
    after_stop = _md_heap(snap)
    after_stop_traced = tracemalloc.get_traced_memory()[0] - base_traced
    top = [
        (str(s.traceback[0]), s.size)
        for s in snap.filter_traces([tracemalloc.Filter(True, str(Path(md.__file__).parent) + "/*")])
        .statistics("lineno")[:5]
    ]
    del snap
    tracemalloc.stop()
    ov = dbg.monitor_overhead()
    out = {
        "steps": steps,
        "layers": len(dbg.layer_info),
        "params": len(list(model.parameters())),
        "plain_step_ms": 1e3 * plain_step_s,
        "watched_run_s": run_s,
        "watched_step_ms_with_tracemalloc": 1e3 * run_s / steps,
        "snapshot_s": snap_s,
        "heap_by_step": [h[:3] for h in heap],
        "rss_by_step": [(h[0], h[3]) for h in heap],
        "md_heap_end_bytes": heap[-1][1],
        "traced_growth_end_bytes": heap[-1][2],
        "traced_growth_after_stop_bytes": after_stop_traced,
        "md_heap_peak_bytes": max(h[1] for h in heap),
        "md_heap_after_stop_bytes": after_stop,
        "md_heap_growth_bytes": heap[-1][1] - heap[0][1],
        "traced_peak_over_run_bytes": traced_peak,
        "rss_start_bytes": rss0,
        "rss_growth_bytes": heap[-1][3] - heap[0][3],
        "rss_end_bytes": _rss(),
        "monitor_peak_memory_bytes": ov.peak_memory_bytes,
        "monitor_time_fraction": ov.time_fraction,
        "sampled_steps": ov.sampled_steps,
        "top_allocations_after_stop": top,
        "store_bytes": store.stat().st_size + sum(p.stat().st_size for p in tmp.glob("long.db-*")),
    }

    # Part 4: analysing the run.
    from modeldebug.analysis import analyze
    from modeldebug.rules import run_rules
    from modeldebug.store import RunStore

    with RunStore(store) as s:
        t = time.perf_counter()
        ev = s.load_evidence(dbg.run_id)
        out["load_evidence_s"] = time.perf_counter() - t
        t = time.perf_counter()
        findings = run_rules(ev)
        out["rules_s"] = time.perf_counter() - t
        t = time.perf_counter()
        report = analyze(ev)
        out["analyze_s"] = time.perf_counter() - t
    out["rows"] = {"steps": len(ev.steps), "layer_stats": len(ev.layer_stats), "param_stats": len(ev.param_stats)}
    out["findings"] = [f.kind for f in findings]
    out["report_findings"] = len(report.findings)
    return out


def print_long(r: dict) -> None:
    mb = 1 / 2**20
    h = r["heap_by_step"]
    print(f"\n== Long run: {r['steps']} steps, {r['layers']} layers ({r['params']} parameters), default config ==")
    print(f"  plain step {r['plain_step_ms']:.2f} ms; watched run {r['watched_run_s']:.0f} s "
          f"({r['watched_step_ms_with_tracemalloc']:.2f} ms/step with tracemalloc on, snapshots excluded); "
          f"sampled {r['sampled_steps']} steps")
    print("  monitor's heap by step, MB (in modeldebug's files / whole traced heap over its level before watch):")
    print("    " + ", ".join(f"{s}: {a * mb:.2f}/{b * mb:.2f}" for s, a, b in h))
    print(f"  end (step {r['steps']}): {r['md_heap_end_bytes'] * mb:.2f} MB / {r['traced_growth_end_bytes'] * mb:.2f} MB; "
          f"after stop(): {r['md_heap_after_stop_bytes'] * mb:.2f} MB / {r['traced_growth_after_stop_bytes'] * mb:.2f} MB; "
          f"peak: {r['md_heap_peak_bytes'] * mb:.2f} MB at checkpoints, whole traced heap "
          f"{r['traced_peak_over_run_bytes'] * mb:.2f} MB over its level (any moment)")
    print(f"  RSS growth step {h[0][0]}->{r['steps']}: {r['rss_growth_bytes'] * mb:.1f} MB; "
          f"monitor_overhead().peak_memory_bytes {r['monitor_peak_memory_bytes'] * mb:.2f} MB (tensors it held); "
          f"run store on disk {r['store_bytes'] * mb:.1f} MB")
    print(f"  rows: {r['rows']}")
    kinds = {k: r["findings"].count(k) for k in dict.fromkeys(r["findings"])}
    print(f"  load_evidence {r['load_evidence_s']:.3f} s, run_rules {r['rules_s']:.3f} s, "
          f"analyze (rules + summary) {r['analyze_s']:.3f} s; findings: {kinds}")


# ---------------------------------------------------------------------------------------- goals


def goals(results: list[dict], e2e: dict | None, long: dict | None,
          short: list[dict] | None = None) -> list[tuple[str, str, str]]:
    rows = []
    for r in short or []:
        c = r["configs"].get("md-default")
        if c is None:
            continue
        worst = max(c["ratio_amortized"], c["ratio_median"])
        rows.append((f"default on {r['model']} ({r['configs']['plain']['median_ms']:.2f} ms steps) <= 1.05x",
                     "PASS" if worst <= GOALS["short"] else "MISS",
                     f"{worst:.3f}x (mean {c['ratio_mean']:.3f}x)"))
        if r["model"] == "stack13":
            us = c["monitor_unsampled_us"]
            rows.append(("unsampled step <= 50 us host time, 13 modules", "PASS" if us <= GOALS["unsampled_us"] else "MISS",
                         f"{us:.1f} us self-reported, {c['extra_unsampled_us']:.1f} us measured beyond plain"))
    for key, cfg, col in (("default", "md-default", "ratio_amortized"), ("every", "md-every", "ratio_median")):
        vals = {r["model"]: r["configs"][cfg] for r in results if cfg in r["configs"]}
        if not vals:
            continue
        # Judged on the worse of the amortized/median ratio and the mean ratio (the mean carries
        # the machine's noise too, so a MISS on it alone is flagged as such).
        worst = max(max(v[col], v["ratio_median"]) for v in vals.values())
        worst_mean = max(v["ratio_mean"] for v in vals.values())
        detail = ", ".join(f"{m} {max(v[col], v['ratio_median']):.3f}x (mean {v['ratio_mean']:.3f}x)" for m, v in vals.items())
        verdict = "PASS" if worst <= GOALS[key] else "MISS"
        if verdict == "PASS" and worst_mean > GOALS[key]:
            verdict = "PASS (mean MISS)"
        label = "default <= 1.03x plain" if key == "default" else "every stat every step <= 1.5x"
        rows.append((label, verdict, detail))
    if e2e:
        ok = e2e["startup_extra_s"] <= GOALS["startup_s"]
        rows.append(("`modeldebug run` start-up adds <= 0.5 s", "PASS" if ok else "MISS",
                     f"+{e2e['startup_extra_s']:.2f} s on a 5-step script (import torch {e2e['import_torch_s']:.2f} s)"))
    if long:
        mb = 1 / 2**20
        h = long["heap_by_step"]
        ref = h[1] if len(h) > 1 else h[0]  # the first checkpoint after the schedule's warm-up
        growth = max(h[-1][1] - ref[1], h[-1][2] - ref[2])
        ok = growth <= 2**20  # bounded: no more than 1 MB more at the end than at that checkpoint
        rows.append(("monitor memory bounded", "PASS" if ok else "MISS",
                     f"step {ref[0]} -> {long['steps']}: modeldebug heap {ref[1] * mb:.2f} -> {h[-1][1] * mb:.2f} MB, "
                     f"traced heap over base {ref[2] * mb:.2f} -> {h[-1][2] * mb:.2f} MB, "
                     f"peak {long['traced_peak_over_run_bytes'] * mb:.2f} MB"))
        ok = long["rules_s"] < GOALS["analysis_s"]
        rows.append((f"rules on {long['steps']} steps x {long['layers']} layers < 1 s", "PASS" if ok else "MISS",
                     f"run_rules {long['rules_s']:.2f} s (load {long['load_evidence_s']:.2f} s, analyze {long['analyze_s']:.2f} s)"))
    return rows


def print_goals(rows) -> None:
    print("\n== Goals ==")
    for label, verdict, detail in rows:
        print(f"  {verdict:<16} {label:<45} {detail}")


# ---------------------------------------------------------------------------------------- counts


def _stack_of(modules: int) -> nn.Sequential:
    """Linear 64x64, ReLU, Linear, ... : ``modules`` of them (a Linear last)."""
    return nn.Sequential(*(nn.Linear(64, 64) if i % 2 == 0 else nn.ReLU() for i in range(modules | 1)))


def bench_counts(sizes: tuple[int, ...] = (3, 13, 31), steps: int = 20) -> list[dict]:
    """What an unsampled step costs us, counted (the same on a loaded machine): bytecodes run in
    modeldebug's own frames (``sys.settrace`` opcode events), calls made while one of its frames is
    on the stack (``sys.setprofile``: Python and C, the user's work under our wrappers included),
    and the objects it leaves allocated per step; for stacks of 3 to 31 modules."""
    src = str(Path(md.__file__).parent)
    out = []
    for modules in sizes:
        torch.manual_seed(0)
        model = _stack_of(modules)
        x, y = torch.randn(64, 64), torch.randint(0, 64, (64,))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            loss.item()

        store = md.RunStore(None, flush_interval_s=1e9, flush_rows=10**6)  # no write inside the counted steps
        dbg = md.watch(model, opt, config=md.DebuggingConfig(every=10**9, warmup_steps=0), store=store).start()
        for _ in range(300):  # past the warm-up, the first 100 steps' fingerprints, the first 256's memory
            step()
        ops = calls = 0

        def trace(frame, event, arg):
            nonlocal ops
            if not frame.f_code.co_filename.startswith(src):
                return None
            if event == "call":
                frame.f_trace_opcodes, frame.f_trace_lines = True, False
            elif event == "opcode":
                ops += 1
            return trace

        def profile(frame, event, arg):
            nonlocal calls
            if event in ("call", "c_call"):
                f = frame
                while f is not None and not f.f_code.co_filename.startswith(src):
                    f = f.f_back
                calls += f is not None

        sampled = dbg.monitor_overhead().sampled_steps
        for hook, setter in ((trace, sys.settrace), (profile, sys.setprofile)):
            setter(hook)
            try:
                for _ in range(steps):
                    step()
            finally:
                setter(None)
        gc.collect()
        blocks = sys.getallocatedblocks()
        for _ in range(steps):
            step()
        grown = sys.getallocatedblocks() - blocks
        out.append({"modules": len(model), "params": len(list(model.parameters())), "bytecodes": ops / steps,
                    "calls": calls / steps, "blocks_kept_per_step": grown / steps,
                    "all_unsampled": dbg.monitor_overhead().sampled_steps == sampled})
        dbg.stop()
    return out


def print_counts(rows: list[dict]) -> None:
    print("\n== An unsampled step, counted (load-independent) ==")
    print(f"{'modules':>8}{'params':>8}{'bytecodes':>11}{'calls':>8}{'blocks kept':>13}")
    for r in rows:
        flag = "" if r["all_unsampled"] else "  (a counted step was sampled: not comparable)"
        print(f"{r['modules']:>8}{r['params']:>8}{r['bytecodes']:>11.0f}{r['calls']:>8.0f}{r['blocks_kept_per_step']:>13.1f}{flag}")
    print("(bytecodes: run in modeldebug's frames; calls: Python and C calls while a modeldebug frame is on the "
          "stack, the user's work under the patched calls included; blocks kept: Python memory blocks still "
          "allocated per step, the store's buffered rows)")


# ---------------------------------------------------------------------------------------- profile


def profile(model_name: str, steps: int, tmp: Path, top: int = 25, device: str = "cpu") -> None:
    """cProfile of modeldebug's default and every-step configs on one model, monitor functions first."""
    src = str(Path(md.__file__).parent)
    # The wrappers of the user's own calls (backward, zero_grad, loss functions): their cumtime is
    # mostly the user's work, so they are left out of the listing (the hooks they call are in it).
    wrappers = {"backward", "_run_backward", "zero_grad", "loss_fn", "__next__"}
    user_work = {"backward", "zero_grad", "inner", "cross_entropy", "mse_loss"}
    for name in ("md-unsampled", "md-default", "md-every"):
        torch.manual_seed(0)
        base, x, y = MODELS[model_name]()
        base, x, y = base.to(device), x.to(device), y.to(device)
        if name == "md-unsampled":  # the always-on path alone: only step 0 is sampled
            case = make_case("md-default", base, x, y, tmp, model_name + "-prof0")
            case.dbg.stop()
            model = copy.deepcopy(base)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            case = ModelDebug(name, model, opt, x, y, nn.CrossEntropyLoss())
            cfg = md.DebuggingConfig(every=10**9, warmup_steps=0, store_path=str(tmp / "prof0.db"))
            case.dbg = md.watch(model, opt, config=cfg).start()
            case.dbg.pause()
        else:
            case = make_case(name, base, x, y, tmp, model_name + "-prof")
        case.begin_chunk()
        for _ in range(30):
            case.timed_step(record=False)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        for _ in range(steps):
            case.timed_step(record=True)
        prof.disable()
        wall = time.perf_counter() - t
        case.end_chunk()
        case.close()
        st = pstats.Stats(prof)
        rows = [
            (k, v) for k, v in st.stats.items()
            if k[0].startswith(src) and not (k[0].endswith("patches.py") and k[2] in wrappers)
        ]
        total_tt = sum(v[2] for _, v in rows)
        print(f"\n== cProfile: {model_name} {name}, {steps} steps, {wall:.2f} s under the profiler; "
              f"{total_tt:.3f} s own time in modeldebug functions ({100 * total_tt / wall:.1f}%), "
              f"sampled {sum(case.sampled)} steps; self-reported monitor time "
              f"{1e3 * case.monitor_s / steps:.3f} ms/step, step median {1e3 * median(case.times):.2f} ms ==")
        print(f"  {'ncalls':>8} {'tottime':>8} {'cumtime':>8} {'cum/step ms':>11}  function")
        for (fn, line, func), (cc, nc, tt, ct, _) in sorted(rows, key=lambda kv: -kv[1][3])[:top]:
            print(f"  {nc:>8} {tt:>8.3f} {ct:>8.3f} {1e3 * ct / steps:>11.3f}  {Path(fn).relative_to(src) if fn.startswith(src) else fn}:{line}({func})")
        # torch functions called by modeldebug, by own time (what the monitor's code spends in torch)
        callees: dict[tuple, list[float]] = {}
        for k, v in st.stats.items():
            for caller, cv in v[4].items():
                if caller[0].startswith(src) and not k[0].startswith(src) and k[2] not in user_work:
                    acc = callees.setdefault(k, [0, 0.0])
                    acc[0] += cv[1]
                    acc[1] += cv[3]
        print("  called from modeldebug (cumtime within those calls):")
        for k, (n, ct) in sorted(callees.items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"  {n:>8} {'':>8} {ct:>8.3f} {1e3 * ct / steps:>11.3f}  {Path(k[0]).name}:{k[1]}({k[2]})")


# ---------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps (a couple of minutes)")
    ap.add_argument("--models", default=",".join(LONG_STEP_MODELS),
                    help=f"comma-separated, of {','.join(MODELS)} (part steps; part short runs {','.join(SHORT_STEP_MODELS)})")
    ap.add_argument("--only", default=",".join(c for c in CONFIGS if c not in FLOOR_PARTS), help=f"configurations, of {','.join(CONFIGS)} (plain is always run)")
    ap.add_argument("--parts", default="steps,short,floor,counts,e2e,long",
                    help="of steps,short,floor,counts,e2e,long (short: sub-millisecond CPU steps, models mlp3,stack13; "
                         "floor: on those, each mechanism the monitor rests on alone, doing nothing; "
                         "counts: an unsampled step's bytecodes and calls, 3-31 modules)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per model (default 20, quick 6)")
    ap.add_argument("--chunk", type=int, default=15, help="steps of a fast configuration per round")
    ap.add_argument("--long-steps", type=int, help="steps of the long run (default 10000, quick 2000)")
    ap.add_argument("--repeats", type=int, help="end-to-end repeats (default 5, quick 3)")
    ap.add_argument("--profile", metavar="MODEL", help="only profile modeldebug's configs on MODEL")
    ap.add_argument("--profile-steps", type=int, default=200)
    ap.add_argument("--json", metavar="PATH", help="save every number as JSON")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (part steps; chunks timed between syncs on cuda)")
    ap.add_argument("--target-ms", type=float, default=0.0,
                    help="cuda: repeat each model's batch until a plain step takes this long (0: as on CPU)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")

    logging.getLogger("wandb").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.only.split(",") if c]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; expected one of {', '.join(MODELS)}")
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r}; expected one of {', '.join(CONFIGS)}")
    configs = ["plain"] + [c for c in CONFIGS if c in configs and c != "plain"]
    parts = set(args.parts.split(","))
    rounds = args.rounds or (6 if args.quick else 20)
    long_steps = args.long_steps or (2000 if args.quick else 10000)
    repeats = args.repeats or (3 if args.quick else 5)

    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"modeldebug overhead benchmark, {time.strftime('%Y-%m-%d %H:%M')}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}; device {args.device}{gpu}")
    t_all = time.perf_counter()
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="md-bench-") as tmpname:
        tmp = Path(tmpname)
        if args.profile:
            profile(args.profile, args.profile_steps, tmp, device=args.device)
            return 0
        results: list[dict] = []
        short: list[dict] = []
        e2e = long = None
        if "steps" in parts:
            wandb_run = None
            if any(c.startswith("wandb") for c in configs):
                import wandb

                wandb_run = wandb.init(mode="offline", dir=str(tmp), project="modeldebug-bench",
                                       settings=wandb.Settings(silent=True, console="off"))
            try:
                for m in models:
                    r = bench_model(m, configs, rounds, args.chunk, warmup=30, tmp=tmp, device=args.device,
                                    target_ms=args.target_ms)
                    results.append(r)
                    print(f"  [{m}: {r['wall_s']:.0f} s]", flush=True)
            finally:
                if wandb_run is not None:
                    wandb_run.finish()
            print_steps(results)
            out["steps"] = results
        if "short" in parts:
            md_configs = [c for c in configs if c in ("plain", "md-default", "md-every")]
            for m in SHORT_STEP_MODELS:
                # Short steps are noisier: more rounds of the same chunk, in one interleaved run.
                r = bench_model(m, md_configs, 3 * rounds, args.chunk * 2, warmup=300, tmp=tmp, device=args.device)
                short.append(r)
                print(f"  [{m}: {r['wall_s']:.0f} s]", flush=True)
            print_short(short)
            out["short"] = short
        if "floor" in parts:
            floor = []
            for m in SHORT_STEP_MODELS:
                r = bench_model(m, ["plain", *FLOOR_PARTS, "md-default"], 3 * rounds, args.chunk * 2, warmup=300,
                                tmp=tmp, device=args.device)
                floor.append(r)
                print(f"  [{m}: {r['wall_s']:.0f} s]", flush=True)
            print_floor(floor)
            out["floor"] = floor
        if "counts" in parts:
            out["counts"] = bench_counts()
            print_counts(out["counts"])
        if "e2e" in parts:
            e2e = bench_e2e(repeats, tmp, steps=200)
            print_e2e(e2e)
            out["e2e"] = e2e
        if "long" in parts:
            long = bench_long(long_steps, tmp)
            print_long(long)
            out["long"] = long
        rows = goals(results, e2e, long, short)
        print_goals(rows)
        out["goals"] = [{"goal": g, "verdict": v, "detail": d} for g, v, d in rows]
    out["total_s"] = time.perf_counter() - t_all
    print(f"\nTotal {out['total_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print(f"Numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
