"""Builders of hand-made Evidence for rule tests (imported by them as ``from builders import ...``).

``healthy_columns`` makes the columns of a healthy synthetic run (loss falling with minibatch
noise, steady gradients, plateaued memory, ReLU MLP with default init); a test changes the
columns that plant its fault and calls ``build``. Small cases use ``Evidence.build`` with dicts.
"""

from __future__ import annotations

import math

import numpy as np

from modeldebug.evidence import (
    LAYER_COLUMNS,
    PARAM_COLUMNS,
    STEP_COLUMNS,
    VALIDATION_COLUMNS,
    Evidence,
    LayerInfo,
    OptimizerInfo,
    ParamInfo,
    Table,
)
from modeldebug.types import RunInfo


def mlp(widths=(784, 256, 128, 10), act="ReLU"):
    """layers and params of nn.Sequential(Linear, act, Linear, act, ..., Linear)."""
    layers, params, order = {}, {}, 0
    names = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = f"net.{2 * i}"
        layers[lin] = LayerInfo(lin, "Linear", order, a * b + b, f"Linear(in_features={a}, out_features={b}, bias=True)")
        params[f"{lin}.weight"] = ParamInfo(f"{lin}.weight", lin, [b, a], a * b, True, True, 0.01)
        params[f"{lin}.bias"] = ParamInfo(f"{lin}.bias", lin, [b], b, True, True, 0.01)
        names.append(lin)
        order += 1
        if i < len(widths) - 2:
            a_name = f"net.{2 * i + 1}"
            layers[a_name] = LayerInfo(a_name, act, order, 0, f"{act}()")
            names.append(a_name)
            order += 1
    return layers, params, names


def healthy_columns(n_steps=300, every=10, widths=(784, 256, 128, 10), act="ReLU", seed=0):
    """Columns of a healthy run: dict(steps=..., layer_stats=..., param_stats=..., validation=...)."""
    rng = np.random.default_rng(seed)
    layers, params, names = mlp(widths, act)
    st = np.arange(n_steps)
    loss = (2.2 * np.exp(-st / (n_steps / 4)) + 0.1) * (1 + 0.1 * rng.standard_normal(n_steps))
    steps = {
        "step": st, "loss": loss, "grad_norm": 1.0 + 0.2 * rng.random(n_steps), "lr": np.full(n_steps, 0.01),
        "data_s": np.full(n_steps, 0.001), "forward_s": np.full(n_steps, 0.003),
        "backward_s": np.full(n_steps, 0.005), "optimizer_s": np.full(n_steps, 0.001),
        "step_s": np.full(n_steps, 0.010), "rss_bytes": 5e8 + 1e6 * rng.random(n_steps),
        "input_mean": 0.02 * rng.standard_normal(n_steps), "input_std": 1 + 0.02 * rng.standard_normal(n_steps),
        "input_min": np.full(n_steps, -3.0), "input_max": np.full(n_steps, 3.5),
        "stale_grad_norm": np.zeros(n_steps), "optimizer_stepped": np.ones(n_steps, bool),
        "backward_calls": np.ones(n_steps, int), "forward_calls": np.ones(n_steps, int),
        "sampled": st % every == 0,
    }
    sampled = st[st % every == 0]
    k, n_l = len(sampled), len(names)
    lt = {
        "step": np.repeat(sampled, n_l), "layer": np.tile(np.array(names), k),
        "mean": np.full(k * n_l, 0.1), "std": np.full(k * n_l, 1.0),
        "fwd_time_s": np.tile(np.array([0.0004 if layers[n].type == "Linear" else 0.0001 for n in names]), k),
        "dead_frac": np.tile(np.array([0.05 if layers[n].type == "ReLU" else np.nan for n in names]), k),
        "sat_frac": np.tile(np.array([0.05 if layers[n].type in ("Sigmoid", "Tanh") else np.nan for n in names]), k),
        "zero_frac": np.full(k * n_l, 0.3), "grad_norm": np.full(k * n_l, 0.05),
        "grad_zero_frac": np.tile(np.array([0.5 if layers[n].type == "ReLU" else 0.0 for n in names]), k),
        "nonfinite": np.zeros(k * n_l, int), "grad_nonfinite": np.zeros(k * n_l, int),
    }
    pnames = list(params)
    n_p = len(pnames)
    init_norm = np.array([
        math.sqrt(params[p].numel) * (0.58 / math.sqrt(params[p].numel // params[p].shape[0])) for p in pnames])
    pt = {
        "step": np.repeat(sampled, n_p), "param": np.tile(np.array(pnames), k),
        "norm": np.tile(init_norm, k) * (1 + 0.001 * np.repeat(np.arange(k), n_p)),
        "grad_norm": 0.1 + 0.05 * rng.random(k * n_p), "update_ratio": np.full(k * n_p, 1e-3),
        "has_grad": np.ones(k * n_p, bool), "changed": np.ones(k * n_p, bool),
    }
    vsteps = np.arange(n_steps // 5, n_steps + 1, n_steps // 5)
    validation = {"step": vsteps, "loss": 2.2 * np.exp(-vsteps / (n_steps / 4)) + 0.15, "batches": np.ones(len(vsteps))}
    return {"steps": steps, "layer_stats": lt, "param_stats": pt, "validation": validation,
            "layers": layers, "params": params,
            "optimizers": [OptimizerInfo("SGD", [{"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}])]}


def _table(cols: dict, names: list[str], n: int) -> Table:
    out = {}
    for name in names:
        if name in cols:
            out[name] = np.asarray(cols[name])
        elif name in ("loss_nonfinite", "grad_nonfinite", "input_nonfinite", "has_grad", "changed", "sampled"):
            out[name] = np.zeros(n, bool)
        elif name == "optimizer_stepped":
            out[name] = np.ones(n, bool)
        elif name in ("nonfinite", "backward_calls", "forward_calls", "numel"):
            out[name] = np.zeros(n, int)
        elif name == "hist":
            out[name] = np.full(n, None, dtype=object)
        else:
            out[name] = np.full(n, np.nan)
    return Table(out)


def build(cols: dict, **extra) -> Evidence:
    """Evidence from ``healthy_columns``-style column dicts (missing columns get record defaults)."""
    s, lt, pt, v = cols["steps"], cols.get("layer_stats", {}), cols.get("param_stats", {}), cols.get("validation", {})
    n = len(s["step"])
    kw = dict(layers=cols.get("layers", {}), params=cols.get("params", {}), optimizers=cols.get("optimizers", []))
    kw.update(extra)
    return Evidence(
        run=RunInfo(id="synthetic", status="completed", steps=n),
        steps=_table(s, STEP_COLUMNS, n),
        layer_stats=_table(lt, LAYER_COLUMNS, len(lt.get("step", []))),
        param_stats=_table(pt, PARAM_COLUMNS, len(pt.get("step", []))),
        validation=_table(v, VALIDATION_COLUMNS, len(v.get("step", []))),
        **kw,
    )
