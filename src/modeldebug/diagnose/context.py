"""What a builder knows about a failure (``Context``) and what it returns (``Diagnosis``), with the
small helpers the builders' messages share (shapes, variable names, module calls, loss names)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from modeldebug.events import LOSS_FUNCS
from modeldebug.types import Recommendation


# A saved tensor changed in place since the forward: a leaf (a parameter: "[T [shape]] is at version"),
# or the output of a graph node ("[T [shape]], which is output 0 of TBackward0, is at version").
SAVED_VERSION = (r"modified by an inplace operation: \[[\w.]+ (\[[\d, ]*\])\](?:, which is output \d+ of (\w+),)? "
                 r"is at version (\d+); expected version (\d+)")
# nodes whose output is a view of their input: a parameter's view (weight.T in a Linear) shares its version
VIEW_NODES = ("AsStrided", "T", "Transpose", "Permute", "View", "UnsafeView", "Expand", "Select", "Slice",
              "Unsqueeze", "Squeeze", "Alias", "Reshape", "Diagonal", "Unfold", "Split", "Narrow")


@dataclass
class Context:
    """Everything a builder may use. Fields are None/empty when the source could not tell."""

    error_type: str
    message: str
    module: str | None = None  # qualified name (or None when unknown)
    module_type: str | None = None  # class name: "Linear"
    module_args: dict[str, Any] = field(default_factory=dict)  # in_features=512, ...
    module_hint: str | None = None  # text only: the attribute the user's forward called (`self.fc`)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # forward arguments
    local_tensors: list[dict[str, Any]] = field(default_factory=list)  # other tensors in that frame
    parameters: list[dict[str, Any]] = field(default_factory=list)
    function: str | None = None  # innermost torch function (cross_entropy, ...)
    op_inputs: list[dict[str, Any]] = field(default_factory=list)
    in_backward: bool = False
    near_module: str | None = None  # backward: the layer whose parameters sit right below the failing node
    upstream_ops: list[str] = field(default_factory=list)  # backward: graph nodes from the failing one up to the loss
    changed_parameters: list[str] = field(default_factory=list)  # backward: parameters changed in place since the forward
    where: str | None = None  # "train.py:42" of the innermost frame outside torch
    source: str | None = None  # the source line at `where`
    from_text: bool = False
    full_text: str = ""  # text only: everything given (CUDA prints kernel assertions before the traceback)
    unknown: list[str] = field(default_factory=list)  # what could not be known (text only)
    loss: dict[str, Any] = field(default_factory=dict)  # backward: the tensor it was called on (requires_grad, ...)
    run: dict[str, Any] = field(default_factory=dict)  # what the watching run knows (diagnose.autograd.run_facts)

    @property
    def name(self) -> str:
        """How a message names the module: `classifier.0`, or the class, or the call site."""
        if self.module:
            return f"`{self.module}`"
        if self.module_hint:
            return f"`{self.module_hint}`"
        if self.module_type:
            return f"the {self.module_type}"
        if self.where:
            return f"the code at {self.where}"
        return "the failing operation"

    def first_input(self) -> dict[str, Any] | None:
        for t in self.inputs + self.op_inputs:
            return t
        return None

    def tensor(self, *names: str) -> dict[str, Any] | None:
        for t in self.op_inputs + self.inputs + self.local_tensors:
            if t.get("name") in names:
                return t
        return None


@dataclass
class Diagnosis:
    message: str
    recommendations: list[Recommendation] = field(default_factory=list)
    causes: list[str] = field(default_factory=lambda: ["other"])
    confidence: float = 0.9
    evidence: dict[str, Any] = field(default_factory=dict)


def shape_str(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def ints(s: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", s)]


def var_name(ctx: Context, default: str = "x") -> str:
    t = ctx.first_input()
    name = t.get("name") if t else None
    return name if name and name.isidentifier() and name not in ("input", "args") else default


def module_call(ctx: Context) -> str:
    """`nn.Linear(512, 10)` for the module in the context (its real arguments)."""
    a, t = ctx.module_args, ctx.module_type or "Module"
    if t == "Linear" and "in_features" in a:
        return f"nn.Linear({a['in_features']}, {a['out_features']})"
    if t.startswith("Conv") and "in_channels" in a:
        return f"nn.{t}({a['in_channels']}, {a['out_channels']}, kernel_size={kernel_arg(a['kernel_size'])})"
    if t in ("LSTM", "GRU", "RNN") and "input_size" in a:
        extra = ", batch_first=True" if a.get("batch_first") else ""
        return f"nn.{t}({a['input_size']}, {a['hidden_size']}{extra})"
    if t == "Embedding" and "num_embeddings" in a:
        return f"nn.Embedding({a['num_embeddings']}, {a['embedding_dim']})"
    if t.startswith("BatchNorm") and "num_features" in a:
        return f"nn.{t}({a['num_features']})"
    return f"nn.{t}" if ctx.module_type else t


def kernel_arg(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and len(set(v)) == 1:
        return v[0]
    return tuple(v) if isinstance(v, list) else v


def find_local(ctx: Context, pred: Callable[[list[int]], bool]) -> dict[str, Any] | None:
    """The most recently assigned local (then argument) whose shape fits: the right operand is
    usually computed last (``q = ...; k = ...; q @ k``)."""
    for t in reversed(ctx.local_tensors):
        if t.get("shape") is not None and pred(list(t["shape"])):
            return t
    for t in ctx.inputs:
        if t.get("shape") is not None and pred(list(t["shape"])):
            return t
    return None




def loss_name(ctx: Context) -> str:
    if ctx.module_type and ctx.module_type.endswith("Loss"):
        return f"`{ctx.module or ctx.module_type}`" if ctx.module else ctx.module_type
    return LOSS_FUNCS.get(ctx.function or "", "The loss")


def first_line(s: str) -> str:
    return (s.strip().splitlines() or [""])[0][:300]
