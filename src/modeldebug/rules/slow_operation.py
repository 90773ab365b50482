"""slow_operation: one layer takes most of the forward time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, autocast_code, col, device_type, g, optimization, per_group_low
from modeldebug.types import Finding

# Standard heavy layers: dominating the time is their job, so at most a hint.
_STANDARD = {"Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
             "LSTM", "GRU", "RNN", "MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer",
             "TransformerEncoder", "TransformerDecoder", "Transformer", "Embedding", "EmbeddingBag", "Bilinear"}


@register
@dataclass
class SlowOperation(Rule):
    """A layer whose own forward time dominates.

    Reads: layer_stats.fwd_time_s (per layer, the lower quartile over sampled steps, the fastest
    of fewer than 5: a busy machine only lengthens a forward, most of all the longest layer's, so a
    median let a healthy MaxPool2d of 0.6 ms 'dominate' on a loaded 2-core machine), layers (types,
    the module tree from the dotted names).
    Fires: when a layer's self time (its forward time minus its direct children's) is at least
    ``share`` = 50% of the summed self times of all layers, with at least ``min_layers`` = 3
    timed layers and a lower quartile of at least ``min_time_s`` = 1 ms (fault suite: below that nobody
    waits). The model's root module is left out (its self time is the glue between layers).
    Severity: medium for custom code (a module that is no torch.nn layer: Python loops, the usual
    slow op); low for a torch.nn layer, heavy (Linear, Conv, LSTM, attention: the expected cost) or
    not (a MaxPool2d dominating a small CNN on a CPU: torch's own kernel, nothing to vectorize).
    Cause: other (no contract cause covers slow code).
    Recommends: vectorize/batch the custom code, torch.compile, or a smaller layer / mixed precision.
    """

    id = "slow_operation"
    kind = "slow_operation"
    reads = ("layer_stats.fwd_time_s", "layers", "run.device")
    level = "detailed"
    share: float = 0.5
    min_layers: int = 3
    min_time_s: float = 0.001

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.layer_stats
        if len(t) == 0:
            return []
        fast = per_group_low(t["layer"], col(t, "fwd_time_s"))
        fast = {str(k): v for k, v in fast.items() if v >= 0}
        if len(fast) < self.min_layers:
            return []
        roots = {n for n in fast if n == "" or all(m == n or m.startswith(n + ".") for m in fast)}
        self_time = {}
        for name, total in fast.items():
            if name in roots:
                continue
            children = [c for c in fast if c.startswith(name + ".") and "." not in c[len(name) + 1:]]
            self_time[name] = max(total - sum(fast[c] for c in children), 0.0)
        total = sum(self_time.values())
        if total <= 0 or len(self_time) < self.min_layers:
            return []
        name = max(self_time, key=self_time.get)
        share = self_time[name] / total
        if share < self.share or fast[name] < self.min_time_s:
            return []
        info = ev.layers.get(name)
        typ = info.type if info else "?"
        # A torch.nn layer (or a subclass of one) runs torch's own kernel: nothing to vectorize. Only
        # custom code (family "") is the usual slow op; a MaxPool2d at 60% of a small CNN's forward is
        # what that CNN costs on a CPU.
        standard = typ in _STANDARD or bool(info is not None and info.family)
        steps = col(t, "step")[t["layer"] == name]
        recs = [optimization("Compile the model so the layer's ops are fused.", "model = torch.compile(model)")]
        if not standard:
            recs.insert(0, optimization(
                f"Vectorize {name} ({typ}): replace Python loops over the batch or positions with batched tensor "
                "ops (broadcasting, torch.bmm, einsum).", "out = torch.einsum('bij,bjk->bik', a, b)  # instead of a loop"))
        elif device_type(ev) in (None, "cuda"):  # on a CPU, bf16 autocast seldom makes a layer faster
            recs.append(optimization(f"If {name} is larger than needed, shrink it, or run it in mixed precision.",
                                     autocast_code(ev, "out = model(x)")))
        else:
            recs.append(optimization(f"If {name} is larger than needed, shrink it."))
        return [self.finding(
            severity="low" if standard else "medium", confidence=0.7, location=name,
            step=int(np.min(steps)) if len(steps) else None,
            message=(f"{name} ({typ}) takes {g(100 * share)}% of the forward time ({g(1e3 * self_time[name])} ms of "
                     f"{g(1e3 * total)} ms per forward, on the faster sampled steps)."),
            evidence={"layer_s": self_time[name], "forward_s": total, "share": share, "type": typ,
                      "description": info.description if info else ""},
            causes=["other"], recommendations=recs,
        )]
