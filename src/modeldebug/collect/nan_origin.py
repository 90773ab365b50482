"""Where did the first NaN or Inf come from? Found by replaying one step, only when it happens.

``torch.autograd.detect_anomaly`` checks every op of every step (and names an autograd node,
not a layer). We check nothing per op during training: the session sees a non-finite loss or
gradient norm (a flag it computes anyway) before the optimizer step, while the weights are
still those the step used, and calls :func:`locate`, which

1. checks the batch (NaN in the data is not the model's fault) and the weights (already
   non-finite when the step began: an earlier update, or how they were made or loaded);
2. replays the forward pass on the same batch, with the same random state, under a
   ``TorchFunctionMode`` that checks every op's output: the first op whose output is non-finite
   while its inputs are finite, and the innermost module running it, is the forward origin;
3. otherwise backpropagates ones from the model's output with ``torch.autograd.grad`` (no
   ``.grad`` is touched) and hooks every autograd node: the first node whose incoming gradient
   is finite and outgoing gradient is not is the backward origin, mapped back to its module;
4. otherwise the non-finite value arose in the loss, outside the model: in the loss's own ops, or
   on outputs so large that the loss or its gradients overflow. The module that grew its
   activations most (largest output over largest input) is named when it grew them by
   ``BLOWUP`` = 1e6x or more to 1e6 or more: healthy layers keep the scale of what they are given
   within ~10x, and their outputs within ~1e3.

Buffers (BatchNorm running statistics) and the random state are restored after the replay.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

# float32 exp overflows above this
EXP_LIMIT = 88.7
# A module whose largest output is this many times its largest input blew its activations up.
BLOWUP = 1e6


@dataclass
class Origin:
    phase: str  # input | weights | forward | backward | loss
    module: str | None = None
    module_type: str | None = None
    op: str | None = None
    cause: str = ""  # plain words: "log of 0", "sqrt of a negative number", ...
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def _tensors(value, depth: int = 0):
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1)


def _largest(t: torch.Tensor) -> float:
    """The largest finite |value| of a floating tensor (0 for an empty or all non-finite one)."""
    x = t.detach()
    x = x[torch.isfinite(x)]
    return float(x.abs().max()) if x.numel() else 0.0


def _describe(t: torch.Tensor) -> dict[str, Any]:
    if not t.is_floating_point() or t.numel() == 0:
        return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    x = t.detach().float()
    finite = x[torch.isfinite(x)]
    out = {
        "shape": list(t.shape),
        "dtype": str(t.dtype).replace("torch.", ""),
        "nan": int(torch.isnan(x).sum()),
        "posinf": int(torch.isposinf(x).sum()),
        "neginf": int(torch.isneginf(x).sum()),
    }
    if finite.numel():
        out.update(min=float(finite.min()), max=float(finite.max()), zeros=int((finite == 0).sum()),
                   negatives=int((finite < 0).sum()))
    return out


def _forward_cause(op: str, inputs: list[dict], output: dict) -> str:
    """Plain words for why ``op`` turned finite inputs into NaN/Inf."""
    name = op.lower().strip("_")
    first = inputs[0] if inputs else {}
    if name.startswith("log") and not name.startswith("log_softmax") and not name.startswith("logsumexp"):
        if first.get("zeros"):
            return "log of 0"
        if first.get("negatives"):
            return "log of a negative number"
    if name in ("sqrt", "rsqrt") and first.get("negatives"):
        return "sqrt of a negative number"
    if name in ("div", "true_divide", "truediv", "rtruediv", "reciprocal", "rsqrt", "floor_divide", "idiv", "itruediv"):
        divisor = inputs[1] if len(inputs) > 1 and name != "reciprocal" and name != "rsqrt" else first
        if name == "rtruediv":
            divisor = first
        if divisor.get("zeros"):
            return "division by 0"
    if name in ("exp", "expm1", "exp2", "pow", "cosh", "sinh") and max((i.get("max", 0) for i in inputs), default=0) > EXP_LIMIT:
        return "exp overflow"
    if output.get("posinf") or output.get("neginf"):
        biggest = max((max(abs(i.get("min", 0)), abs(i.get("max", 0))) for i in inputs), default=0)
        return f"overflow in {op} (inputs up to {biggest:.3g})"
    return f"{op} produced NaN"


_BACKWARD_CAUSES = {
    "Sqrt": "the gradient of sqrt at 0 is infinite",
    "Rsqrt": "the gradient of rsqrt at 0 is infinite",
    "Pow": "the gradient of a fractional power at 0 is infinite",
    "Log": "the gradient of log at 0 is infinite",
    "Div": "division by a value at or near 0 in the backward pass",
    "Reciprocal": "the gradient of 1/x at 0 is infinite",
    "Norm": "the gradient of a norm at the zero vector is NaN",
    "LinalgVectorNorm": "the gradient of a norm at the zero vector is NaN",
    "Acos": "the gradient of acos at +-1 is infinite",
    "Asin": "the gradient of asin at +-1 is infinite",
    "Atanh": "the gradient of atanh at +-1 is infinite",
}


def _backward_cause(node: str) -> str:
    # Built-in nodes are named like "SqrtBackward0"; a Python autograd.Function's node is its
    # class name + "Backward" with no number.
    if node.endswith("Backward"):
        return f"the custom autograd function {node[: -len('Backward')]} returned a non-finite gradient"
    base = node.rstrip("0123456789").removesuffix("Backward")
    return _BACKWARD_CAUSES.get(base, f"the backward of {base} produced a non-finite gradient")


class _Replay(TorchFunctionMode):
    """Checks every op during the replayed forward and tags autograd nodes with their module."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack
        self.first: dict[str, Any] | None = None
        self.node_module: dict[Any, str] = {}
        self.last_seq = -1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        module = self.stack[-1] if self.stack else ""
        outs = [t for t in _tensors(out) if isinstance(t, torch.Tensor)]
        for t in outs:
            fn = t.grad_fn
            if fn is not None:
                self.node_module.setdefault(fn, module)
                self.last_seq = max(self.last_seq, fn._sequence_nr())
        if self.first is None and any(t.is_floating_point() and not _finite(t) for t in outs):
            ins = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
            if all(_finite(t) for t in ins):
                op = getattr(func, "__name__", str(func))
                inputs = [_describe(t) for t in ins]
                output = _describe(next(t for t in outs if not _finite(t)))
                self.first = {"op": op, "module": module, "inputs": inputs, "output": output}
        return out


def locate(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    names: Mapping[int, str] | None = None,
    rng_state: torch.Tensor | None = None,
) -> Origin:
    """Find where a non-finite value first appears in one training step of ``model`` (see module doc)."""
    names = dict(names or {(id(m)): n for n, m in model.named_modules()})
    batch = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
    bad = [t for t in batch if not _finite(t)]
    if bad:
        return Origin("input", cause="NaN or Inf in the input batch", details={"input": _describe(bad[0])})
    for pname, p in model.named_parameters():
        if not _finite(p):
            owner = pname.rsplit(".", 1)[0] if "." in pname else ""
            module = dict(model.named_modules()).get(owner)
            return Origin(
                "weights", module=owner or None, module_type=type(module).__name__ if module is not None else None,
                cause="the weights were already non-finite when the step began",
                details={"parameter": pname, "value": _describe(p)},
            )

    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    saved_rng = torch.get_rng_state()
    stack: list[str] = []
    windows: dict[str, tuple[int, int]] = {}
    sizes: dict[str, list[float]] = {}  # per module: largest |input|, largest |output| (floating, finite)
    mode = _Replay(stack)
    handles = []

    def pre(module, inputs):
        stack.append(names.get(id(module), type(module).__name__))
        windows[stack[-1]] = (mode.last_seq, -1)
        if mode.first is None:
            size = sizes.setdefault(stack[-1], [0.0, 0.0])
            size[0] = max([size[0], *(_largest(t) for t in _tensors(inputs) if t.is_floating_point())])

    def post(module, inputs, output):
        name = stack.pop() if stack else names.get(id(module), "")
        start, _ = windows.get(name, (-1, -1))
        for t in _tensors(output):
            if t.grad_fn is not None:
                mode.node_module.setdefault(t.grad_fn, name)
                mode.last_seq = max(mode.last_seq, t.grad_fn._sequence_nr())
            if t.is_floating_point() and mode.first is None and name in sizes:
                sizes[name][1] = max(sizes[name][1], _largest(t))
        windows[name] = (start, mode.last_seq)

    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post, always_call=True))
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        with torch.enable_grad(), mode:
            output = model(*args, **kwargs)
        handles, old = [], handles
        for h in old:
            h.remove()
        if mode.first is not None:
            f = mode.first
            module = _module(model, f["module"])
            return Origin(
                "forward", module=f["module"] or None, module_type=type(module).__name__ if module is not None else None,
                op=f["op"], cause=_forward_cause(f["op"], f["inputs"], f["output"]),
                details={"inputs": f["inputs"], "output": f["output"]},
            )
        out = next((t for t in _tensors(output) if t.is_floating_point() and t.requires_grad), None)
        if out is not None:
            found = _backward_origin(model, out, mode.node_module, windows)
            if found is not None:
                return found
        # (and outputs large in themselves: a LayerNorm on inputs of 1e-7 grows them 1e7x to ~1)
        grown = max(((o / i, n, i, o) for n, (i, o) in sizes.items() if i > 0 and o >= BLOWUP), default=None)
        if out is not None and grown is not None and grown[0] >= BLOWUP:
            ratio, where, size_in, size_out = grown
            module = _module(model, where)
            return Origin(
                "loss", module=where or None, module_type=type(module).__name__ if module is not None else None,
                cause=(f"the model's outputs reach {_largest(out):.3g}: {where or 'the model'} turns inputs of at "
                       f"most {size_in:.3g} into outputs up to {size_out:.3g}, and the loss or its gradients overflow "
                       "on values that large"),
                details={"output": _describe(out), "blown_up": {"module": where, "input": size_in,
                                                                 "output": size_out, "ratio": ratio}},
            )
        return Origin("loss", cause="the model's forward and backward stay finite on this batch: the non-finite "
                                    "value comes from the loss computation (outside the model)",
                      details={"output": _describe(out)} if out is not None else {})
    except Exception as exc:  # a model that cannot be replayed: say so, never fail the run
        log.debug("replay for the NaN origin failed", exc_info=True)
        return Origin("unknown", cause=f"the step could not be replayed to find the origin ({type(exc).__name__}: {exc})")
    finally:
        for h in handles:
            h.remove()
        torch.set_rng_state(saved_rng)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])


def _module(model: nn.Module, name: str):
    if not name:
        return None
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _backward_origin(model, out, node_module, windows) -> Origin | None:
    nodes, seen, todo = [], set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        nodes.append(fn)
        todo.extend(nxt for nxt, _ in fn.next_functions)
    first: list[Any] = []

    def hook(fn):
        def check(grad_inputs, grad_outputs):
            if first:
                return
            ins_ok = all(g is None or _finite(g) for g in grad_outputs)
            outs_bad = any(g is not None and not _finite(g) for g in grad_inputs)
            if ins_ok and outs_bad:
                bad = next(g for g in grad_inputs if g is not None and not _finite(g))
                first.append((fn, _describe(bad)))

        return check

    handles = [fn.register_hook(hook(fn)) for fn in nodes if not type(fn).__name__ == "AccumulateGrad"]
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        torch.autograd.grad(out, params, grad_outputs=torch.ones_like(out), allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    if not first:
        return None
    fn, grad = first[0]
    node = type(fn).__name__
    module = node_module.get(fn)
    if module is None:  # e.g. a custom autograd.Function: the innermost module whose forward made it
        seq = fn._sequence_nr()
        inside = [(end - start, name) for name, (start, end) in windows.items() if start < seq <= end]
        module = min(inside)[1] if inside else None
    mod = _module(model, module or "")
    return Origin(
        "backward", module=module or None, module_type=type(mod).__name__ if mod is not None else None,
        op=node, cause=_backward_cause(node), details={"gradient": grad},
    )

