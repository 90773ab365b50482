"""ErrorDiagnoser core: an exception (or a saved traceback) -> a ``runtime_error`` Finding.

Two entry points share one table of message patterns (``PATTERNS``: regex -> cause and an
explanation builder), so an exception object and the text of its traceback are explained by the
same code:

* ``diagnose_exception(exc, module_names=..., step=...)``: in the process that raised. The module
  the error happened in comes from the exception's traceback at zero runtime cost (no hooks): the
  innermost frame whose ``self`` is an ``nn.Module``; its ``forward`` arguments give the input
  shapes, dtypes and devices, the module its parameters, and ``module_names`` (``id(obj) ->
  qualified name``, see :func:`module_names_of`) its qualified name. Errors raised in backward have
  no forward frame: the autograd node named in the message is looked up in the loss's graph, and
  the nearest parameters below it say which layer it came after.
* ``diagnose_text(text)``: a traceback saved as text. It parses the last exception line and the
  ``File ..., in forward`` frames (the module's type from torch's file, the attribute the user's
  code called it through), and says what the text alone cannot tell.

``explain(exc_or_text)`` dispatches; it is ``modeldebug.explain`` and ``modeldebug explain FILE``.

Causes (``evidence.cause``): shape_mismatch, dtype_mismatch, device_mismatch, inplace_autograd,
out_of_memory, nan_detected, other. An unknown error is still a finding (cause ``other``) that
points at the line that raised.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from modeldebug.types import Finding, Recommendation

CAUSES = ("shape_mismatch", "dtype_mismatch", "device_mismatch", "inplace_autograd", "out_of_memory",
          "nan_detected", "other")

_MODULE_ARGS = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
                "groups", "input_size", "hidden_size", "num_layers", "batch_first", "bidirectional",
                "num_embeddings", "embedding_dim", "num_features", "normalized_shape", "embed_dim", "num_heads")
_MAX_TENSORS = 8


# --- what we know about the failure ----------------------------------------------------------------


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
    where: str | None = None  # "train.py:42" of the innermost frame outside torch
    from_text: bool = False
    full_text: str = ""  # text only: everything given (CUDA prints kernel assertions before the traceback)
    unknown: list[str] = field(default_factory=list)  # what could not be known (text only)

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


def _fix(description: str, implementation: str | None = None) -> Recommendation:
    return Recommendation(type="fix", description=description, implementation=implementation)


def _opt(description: str, implementation: str | None = None) -> Recommendation:
    return Recommendation(type="optimization", description=description, implementation=implementation)


def _bp(description: str, implementation: str | None = None) -> Recommendation:
    return Recommendation(type="best_practice", description=description, implementation=implementation)


def shape_str(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _ints(s: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", s)]


def _var(ctx: Context, default: str = "x") -> str:
    t = ctx.first_input()
    name = t.get("name") if t else None
    return name if name and name.isidentifier() and name not in ("input", "args") else default


def _module_call(ctx: Context) -> str:
    """`nn.Linear(512, 10)` for the module in the context (its real arguments)."""
    a, t = ctx.module_args, ctx.module_type or "Module"
    if t == "Linear" and "in_features" in a:
        return f"nn.Linear({a['in_features']}, {a['out_features']})"
    if t.startswith("Conv") and "in_channels" in a:
        return f"nn.{t}({a['in_channels']}, {a['out_channels']}, kernel_size={_k(a['kernel_size'])})"
    if t in ("LSTM", "GRU", "RNN") and "input_size" in a:
        extra = ", batch_first=True" if a.get("batch_first") else ""
        return f"nn.{t}({a['input_size']}, {a['hidden_size']}{extra})"
    if t == "Embedding" and "num_embeddings" in a:
        return f"nn.Embedding({a['num_embeddings']}, {a['embedding_dim']})"
    if t.startswith("BatchNorm") and "num_features" in a:
        return f"nn.{t}({a['num_features']})"
    return f"nn.{t}" if ctx.module_type else t


def _k(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and len(set(v)) == 1:
        return v[0]
    return tuple(v) if isinstance(v, list) else v


# --- builders: one per family of messages --------------------------------------------------------


def _mm_shapes(ctx: Context, m: re.Match) -> Diagnosis:
    a, b, c, d = (int(m.group(i)) for i in range(1, 5))
    if ctx.module_type == "Linear" or (ctx.module_type is None and ctx.function == "linear"):
        n_in, n_out = ctx.module_args.get("in_features", c), ctx.module_args.get("out_features", d)
        t = ctx.first_input()
        got = f"input of shape {shape_str(t['shape'])}" if t and t.get("shape") else f"input with {b} features (rows {a})"
        layer = f"is `nn.Linear({n_in}, {n_out})`"
        msg = (f"{ctx.name} {layer} and received {got}: the features reaching it have {b} values, "
               f"not {n_in}; use `nn.Linear({b}, {n_out})` or check the flattening before it.")
        return Diagnosis(msg, [
            _fix(f"Make the layer take {b} input features (or compute in_features from a dummy forward).",
                 f"nn.Linear({b}, {n_out})"),
            _fix(f"Or check the reshape/flatten before {ctx.name}: it must produce {n_in} features per sample.",
                 f"{_var(ctx)} = torch.flatten({_var(ctx)}, 1)  # then {_var(ctx)}.shape[1] must be {n_in}"),
            _bp("Let PyTorch infer the input size on the first call.", f"nn.LazyLinear({n_out})"),
        ], ["other"], 0.95, {"expected_features": n_in, "got_features": b})
    # a plain matmul: left is a x b, right is c x d
    msg = (f"Matrix multiply in {ctx.name}: left operand is {a}x{b}, right is {c}x{d}; the inner sizes "
           f"({b} and {c}) must match.")
    recs = []
    if d == b:
        right = _find_local(ctx, lambda s: len(s) >= 2 and s[-2] == c and s[-1] == d)
        name = right["name"] if right else "the right operand"
        msg += f" The right operand ({c}x{d}) looks transposed."
        recs.append(_fix(f"Transpose {name}: use {name}.transpose(-2, -1) ({d}x{c}).",
                         f"{name if right else 'b'}.transpose(-2, -1)"))
    recs.append(_fix(f"Reshape the operands so the left's last size equals the right's first size ({b} vs {c})."))
    if ctx.module_type is None and ctx.function is None:  # a bare message: it may well be a Linear layer
        recs.insert(0, _fix(f"If this is an nn.Linear({c}, {d}) (most such errors are), the features reaching it "
                            f"have {b} values: use nn.Linear({b}, {d}) or check the flattening before it.",
                            f"nn.Linear({b}, {d})"))
    return Diagnosis(msg, recs, ["other"], 0.85, {"left": [a, b], "right": [c, d]})


def _find_local(ctx: Context, pred: Callable[[list[int]], bool]) -> dict[str, Any] | None:
    """The most recently assigned local (then argument) whose shape fits: the right operand is
    usually computed last (``q = ...; k = ...; q @ k``)."""
    for t in reversed(ctx.local_tensors):
        if t.get("shape") is not None and pred(list(t["shape"])):
            return t
    for t in ctx.inputs:
        if t.get("shape") is not None and pred(list(t["shape"])):
            return t
    return None


def _bmm_shapes(ctx: Context, m: re.Match) -> Diagnosis:
    exp, got = _ints(m.group(1)), _ints(m.group(2))
    msg = (f"Batched matrix multiply in {ctx.name}: the right operand should start with sizes {shape_str(exp)} "
           f"(batch, then the left operand's last size {exp[-1]}) but starts with {shape_str(got)}.")
    recs = []
    right = _find_local(ctx, lambda s: len(s) >= 3 and s[:-1] == got and s[-1] == exp[-1])
    if right is not None:
        name = right["name"]
        msg += f" `{name}` has shape {shape_str(right['shape'])}: it looks transposed."
        recs.append(_fix(f"Transpose `{name}` before the product (e.g. q @ k^T in attention).",
                         f"{name}.transpose(-2, -1)"))
    recs.append(_fix(f"The left operand's last size ({exp[-1]}) must equal the right operand's size at dim -2 "
                     f"({got[-1]}): check which dimensions you multiply."))
    return Diagnosis(msg, recs, ["other"], 0.85, {"expected": exp, "got": got})


def _mv_shapes(ctx: Context, m: re.Match) -> Diagnosis:
    return Diagnosis(f"Matrix-vector product in {ctx.name} with mismatched sizes: {m.group(0)}.",
                     [_fix("The vector's length must equal the matrix's number of columns: check the operand order "
                           "or transpose the matrix.")], ["other"], 0.8)


def _conv_channels(ctx: Context, m: re.Match) -> Diagnosis:
    groups, weight, inp, exp_c, got_c = int(m.group(1)), _ints(m.group(2)), _ints(m.group(3)), int(m.group(4)), int(m.group(5))
    nd = len(weight) - 2
    ctype = ctx.module_type if (ctx.module_type or "").startswith("Conv") else f"Conv{nd}d"
    out_c, k = weight[0], _k(weight[2:])
    layer = f"nn.{ctype}({exp_c}, {out_c}, kernel_size={k})"
    msg = (f"{ctx.name} is `{layer}` and expects {exp_c} input channels, but received input of shape "
           f"{shape_str(inp)} with {got_c} channels (dim 1).")
    recs = []
    if len(inp) >= 2 and inp[-1] == exp_c:
        perm = ", ".join(["0", str(len(inp) - 1)] + [str(i) for i in range(1, len(inp) - 1)])
        msg += f" The input looks channels-last (size {exp_c} is its last dimension)."
        recs.append(_fix("Move channels to dim 1 (PyTorch convolutions take N, C, H, W).",
                         f"{_var(ctx)} = {_var(ctx)}.permute({perm}).contiguous()"))
    recs.append(_fix(f"Make the layer take {got_c} channels.", f"nn.{ctype}({got_c}, {out_c}, kernel_size={k})"))
    if got_c == 1 and exp_c == 3:
        recs.append(_fix("Or repeat grayscale images to 3 channels.", f"{_var(ctx)} = {_var(ctx)}.repeat(1, 3, 1, 1)"))
    else:
        recs.append(_fix(f"Or check the layer before {ctx.name}: it must output {exp_c} channels."))
    return Diagnosis(msg, recs, ["other"], 0.95, {"expected_channels": exp_c, "got_channels": got_c, "groups": groups})


def _conv_ndim(ctx: Context, m: re.Match) -> Diagnosis:
    want_unb, want_b, op, shape = int(m.group(1)), int(m.group(2)), m.group(3), _ints(m.group(4))
    msg = (f"{ctx.name} ({op}) takes {want_b}-D input (N, C, spatial...) or {want_unb}-D unbatched, but received "
           f"{len(shape)}-D input of shape {shape_str(shape)}.")
    recs, v = [], _var(ctx)
    c = ctx.module_args.get("in_channels")
    nsp = want_b - 2
    if len(shape) == 2 and c:
        per = shape[1] // c if shape[1] % c == 0 else None
        side = round(per ** (1 / nsp)) if per else None
        if side and side ** nsp == per:
            target = [shape[0], c] + [side] * nsp
            msg += f" Its {shape[1]} values per sample look like a flattened {shape_str(target[1:])} image."
            recs.append(_fix(f"Restore the image shape before {ctx.name}.",
                             f"{v} = {v}.view({', '.join(str(s) for s in [-1] + target[1:])})"))
    if len(shape) < want_unb:
        recs.append(_fix(f"Add the missing dimension(s): a batch of single-channel inputs needs {v}.unsqueeze(1).",
                         f"{v} = {v}.unsqueeze(1)"))
    elif len(shape) > want_b:
        recs.append(_fix("Remove the extra dimension(s): squeeze size-1 dims or merge dims into the batch.",
                         f"{v} = {v}.flatten(0, {len(shape) - want_b})"))
    if not recs:
        recs.append(_fix(f"Reshape the input to {want_b}-D (N, C, spatial...)."))
    return Diagnosis(msg, recs, ["other"], 0.9, {"expected_ndim": want_b, "got_shape": shape})


def _rnn_size(ctx: Context, m: re.Match) -> Diagnosis:
    exp, got = int(m.group(1)), int(m.group(2))
    t = ctx.module_type if ctx.module_type in ("LSTM", "GRU", "RNN") else "LSTM"
    hidden = ctx.module_args.get("hidden_size")
    inp = ctx.first_input()
    got_s = f" of shape {shape_str(inp['shape'])}" if inp and inp.get("shape") else ""
    bf = ctx.module_args.get("batch_first")
    msg = f"{ctx.name} is `{_module_call(ctx)}` and expects" if hidden else f"{ctx.name} ({t}) expects"
    msg += f" {exp} features per time step (input_size) but received input{got_s} with {got}."
    layer = f"nn.{t}({got}, {hidden}{', batch_first=True' if bf else ''})" if hidden else f"nn.{t}(input_size={got}, ...)"
    recs = [_fix(f"Make input_size match the features: {layer}.", layer)]
    if inp and inp.get("shape") and len(inp["shape"]) == 3 and exp in inp["shape"][:2]:
        recs.insert(0, _fix(f"The input has size {exp} at another dimension: the (batch, time, features) order "
                            f"looks wrong; check batch_first={bool(bf)} or permute the input.",
                            f"{_var(ctx)} = {_var(ctx)}.transpose(1, 2)"))
    else:
        recs.append(_fix(f"Or check the embedding/projection before {ctx.name}: it must output {exp} features."))
    return Diagnosis(msg, recs, ["other"], 0.95, {"expected_features": exp, "got_features": got})


def _rnn_ndim(ctx: Context, m: re.Match) -> Diagnosis:
    t, got = m.group(1), int(m.group(2))
    inp = ctx.first_input()
    shape = inp.get("shape") if inp else None
    msg = f"{ctx.name} ({t}) takes 2-D (time, features) or 3-D (batch, time, features) input but received {got}-D"
    msg += f" input of shape {shape_str(shape)}." if shape else " input."
    recs = []
    v = _var(ctx)
    if shape and len(shape) > 3:
        feats = math.prod(shape[2:])
        recs.append(_fix(f"Merge the trailing dimensions into features ({feats} per step) and use input_size={feats}.",
                         f"{v} = {v}.flatten(2)  # -> {shape_str(shape[:2] + [feats])}"))
    else:
        recs.append(_fix("Reshape the input to (batch, time, features).", f"{v} = {v}.unsqueeze(-1)"))
    return Diagnosis(msg, recs, ["other"], 0.9, {"got_ndim": got})


def _norm_features(ctx: Context, m: re.Match) -> Diagnosis:
    got, exp = int(m.group(1)), int(m.group(2))
    t = ctx.module_type if (ctx.module_type or "").startswith("BatchNorm") else "BatchNorm1d"
    msg = (f"{ctx.name} is `nn.{t}({exp})` but the input has {got} features/channels at dim 1.")
    return Diagnosis(msg, [_fix(f"Use nn.{t}({got}) (num_features must equal the input's size at dim 1).",
                                f"nn.{t}({got})"),
                           _fix(f"Or check the layer before {ctx.name}: it must output {exp} features.")],
                     ["other"], 0.9, {"expected_features": exp, "got_features": got})


def _broadcast(ctx: Context, m: re.Match) -> Diagnosis:
    a, b, dim = int(m.group(1)), int(m.group(2)), int(m.group(3))
    loss = ctx.function in _LOSS_FUNCS
    msg = (f"Elementwise operation in {ctx.name}" if not loss else f"{_LOSS_FUNCS[ctx.function]}")
    msg += f": the operands have sizes {a} and {b} at dimension {dim} and cannot broadcast."
    recs, causes = [], ["other"]
    if loss:
        inp, tgt = ctx.tensor("input"), ctx.tensor("target")
        if inp and tgt:
            msg += f" Input is {shape_str(inp['shape'])}, target {shape_str(tgt['shape'])}."
            if len(inp["shape"]) == len(tgt["shape"]) + 1 and str(tgt.get("dtype", "")).startswith("torch.int"):
                causes = ["wrong_loss_function"]
                recs.append(_fix(f"The targets look like class indices ({tgt['dtype']}): use a classification loss.",
                                 "loss = nn.CrossEntropyLoss()(logits, target)"))
        recs.append(_fix("Give input and target the same shape (e.g. squeeze a trailing size-1 dim or one-hot the target)."))
    else:
        pair = [t for t in ctx.local_tensors + ctx.inputs if t.get("shape") and len(t["shape"]) > dim
                and t["shape"][dim] in (a, b)]
        if pair:
            msg += " Tensors here: " + ", ".join(f"`{t['name']}` {shape_str(t['shape'])}" for t in pair[:4]) + "."
        recs.append(_fix(f"Make the sizes at dimension {dim} equal ({a} vs {b}): e.g. a projection "
                         f"nn.Linear({b}, {a}) on the second operand, or fix the layer that produced it."))
    return Diagnosis(msg, recs, causes, 0.85, {"sizes": [a, b], "dim": dim})


def _target_shape(ctx: Context, m: re.Match) -> Diagnosis:
    tgt, inp = _ints(m.group(1)), _ints(m.group(2))
    msg = f"{_loss_name(ctx)} needs target and input of the same shape; target is {shape_str(tgt)}, input {shape_str(inp)}."
    recs = []
    if inp == tgt + [1]:
        recs.append(_fix("Drop the trailing size-1 dimension of the output (or add it to the target).",
                         "loss = criterion(logits.squeeze(1), target.float())"))
    elif len(inp) == len(tgt) + 1:
        recs.append(_fix(f"The input has {inp[-1]} columns: for {inp[-1]} classes with index targets use "
                         f"CrossEntropyLoss; for multi-label targets one-hot them to {shape_str(inp)}.",
                         "loss = nn.CrossEntropyLoss()(logits, target.long())"))
    recs.append(_fix("Give the target the input's shape.", f"target = target.view({', '.join(map(str, inp))}).float()"))
    return Diagnosis(msg, recs, ["wrong_loss_function"], 0.9, {"input_shape": inp, "target_shape": tgt})


def _batch_size(ctx: Context, m: re.Match) -> Diagnosis:
    a, b = int(m.group(1)), int(m.group(2))
    msg = (f"{_loss_name(ctx)} got {a} predictions for {b} targets: the batch size changed between the input "
           f"and the output.")
    if b and a % b == 0 and a != b:
        msg += f" {a} = {b} x {a // b}: a reshape such as x.view(-1, N) before the classifier likely folded part of the features into the batch."
    return Diagnosis(msg, [_fix("Flatten with the batch kept first: x.flatten(1) or x.view(x.size(0), -1), never x.view(-1, N).",
                                "x = x.view(x.size(0), -1)"),
                           _fix(f"Then set the next Linear's in_features to the flattened size.")],
                     ["other"], 0.9, {"input_batch": a, "target_batch": b})


_LOSS_FUNCS = {"cross_entropy": "CrossEntropyLoss", "nll_loss": "NLLLoss", "mse_loss": "MSELoss",
               "l1_loss": "L1Loss", "binary_cross_entropy": "BCELoss", "smooth_l1_loss": "SmoothL1Loss",
               "binary_cross_entropy_with_logits": "BCEWithLogitsLoss", "huber_loss": "HuberLoss"}


def _loss_name(ctx: Context) -> str:
    if ctx.module_type and ctx.module_type.endswith("Loss"):
        return f"`{ctx.module or ctx.module_type}`" if ctx.module else ctx.module_type
    return _LOSS_FUNCS.get(ctx.function or "", "The loss")


_DTYPE_NAMES = {"Double": "torch.float64", "Float": "torch.float32", "Half": "torch.float16",
                "BFloat16": "torch.bfloat16", "Long": "torch.int64", "Int": "torch.int32", "Byte": "torch.uint8",
                "Bool": "torch.bool", "c10::Half": "torch.float16", "c10::BFloat16": "torch.bfloat16",
                "double": "torch.float64", "float": "torch.float32", "long int": "torch.int64"}
_CAST = {"torch.float32": ".float()", "torch.float64": ".double()", "torch.float16": ".half()",
         "torch.bfloat16": ".bfloat16()", "torch.int64": ".long()"}


def _dt(name: str) -> str:
    name = name.strip()
    if name.startswith("torch.") and name.endswith("Tensor"):  # torch.DoubleTensor / torch.cuda.FloatTensor
        name = name.rsplit(".", 1)[-1][: -len("Tensor")]
    return _DTYPE_NAMES.get(name, name)


def _input_vs_param_dtype(ctx: Context, m: re.Match) -> Diagnosis:
    got, want = _dt(m.group(1)), _dt(m.group(2))
    inp = ctx.first_input()
    if inp and inp.get("dtype") and inp["dtype"] != got and inp["dtype"] == want:  # the order was the other way round
        got, want = want, got
    v = _var(ctx)
    what = f"`{_module_call(ctx)}`" if ctx.module_args else (f"a {ctx.module_type}" if ctx.module_type else "the layer")
    msg = (f"{ctx.name} is {what} with {want} parameters and received input of dtype {got}"
           + (f" (shape {shape_str(inp['shape'])})" if inp and inp.get("shape") else "") + ".")
    cast = _CAST.get(want, f".to({want})")
    recs = []
    if got == "torch.uint8":
        msg += " Raw uint8 pixels must be converted (and scaled) first."
        recs.append(_fix("Convert the images to float and scale them to [0, 1].", f"{v} = {v}.float() / 255"))
    else:
        recs.append(_fix(f"Call `{cast}` on the input.", f"{v} = {v}{cast}"))
    if got == "torch.float64":
        recs.append(_bp("NumPy arrays are float64 by default: convert once in the dataset.",
                        "torch.from_numpy(array).float()  # or torch.tensor(array, dtype=torch.float32)"))
    if got in ("torch.float16", "torch.bfloat16") or want in ("torch.float16", "torch.bfloat16"):
        recs.append(_bp("For mixed precision use autocast instead of casting by hand.",
                        "with torch.autocast(device_type='cuda', dtype=torch.bfloat16):\n    out = model(x)"))
    return Diagnosis(msg, recs, ["other"], 0.9, {"input_dtype": got, "parameter_dtype": want})


def _target_needs_long(ctx: Context, m: re.Match) -> Diagnosis:
    got = _dt(m.group(1) or m.group(2))
    inp, tgt = ctx.tensor("input"), ctx.tensor("target")
    n_cls = inp["shape"][1] if inp and inp.get("shape") and len(inp["shape"]) >= 2 else None
    rng = f" in [0, {n_cls})" if n_cls else ""
    msg = f"{_loss_name(ctx)} takes class-index targets of dtype torch.long{rng}, but the target is {got}"
    msg += f" (shape {shape_str(tgt['shape'])})." if tgt and tgt.get("shape") else "."
    recs = [_fix(f"Targets must be class indices of dtype torch.long{rng}: convert them with `.long()`.",
                 "loss = criterion(logits, target.long())"),
            _fix("If the targets are probabilities or one-hot rows, give them the input's shape (float) instead.")]
    return Diagnosis(msg, recs, ["wrong_loss_function", "label_problem"], 0.9, {"target_dtype": got, "expected": "torch.int64"})


def _target_needs_float(ctx: Context, m: re.Match) -> Diagnosis:
    got, want = _dt(m.group(1)), _dt(m.group(2))
    if want not in ("torch.float32", "torch.float64", "torch.float16", "torch.bfloat16"):
        got, want = want, got
    msg = (f"{_loss_name(ctx)} computes in floating point ({want}) but the target is {got}: "
           f"regression and binary losses need float targets.")
    cast = _CAST.get(want, ".float()")
    return Diagnosis(msg, [_fix(f"Call `{cast}` on the target.", f"loss = criterion(output, target{cast})"),
                           _fix("If the targets are class indices of several classes, use nn.CrossEntropyLoss instead.")],
                     ["wrong_loss_function"], 0.85, {"target_dtype": got, "expected": want})


def _cast_target(ctx: Context, m: re.Match) -> Diagnosis:
    """"result type Float can't be cast to the desired output type Long": a Long target met a float loss."""
    return _target_needs_float(ctx, re.match(r"(\w+) (\w+)", f"{m.group(2)} {m.group(1)}"))


def _index_dtype(ctx: Context, m: re.Match) -> Diagnosis:
    got = _dt(m.group(1))
    v = _var(ctx, "indices")
    msg = f"{ctx.name} ({ctx.module_type or 'embedding'}) takes integer indices (torch.long) but received {got}."
    return Diagnosis(msg, [_fix("Call `.long()` on the indices.", f"{v} = {v}.long()")],
                     ["other"], 0.9, {"input_dtype": got, "expected": "torch.int64"})


def _generic_dtype(ctx: Context, m: re.Match) -> Diagnosis:
    dts = ", ".join(f"`{t['name']}` {t['dtype']}" for t in (ctx.op_inputs or ctx.inputs) if t.get("dtype"))
    msg = f"Mixed dtypes in {ctx.name}: {m.group(0).strip()}" + (f" ({dts})." if dts else "")
    return Diagnosis(msg, [_fix("Cast the operands to one dtype, usually the model's (torch.float32): "
                                "`.float()` on inputs, `.long()` on class indices.", "x = x.float()")],
                     ["other"], 0.75)


def _devices(ctx: Context, m: re.Match) -> Diagnosis:
    devs = sorted(set(re.findall(r"\b(cuda(?::\d+)?|cpu|mps|meta|xpu(?::\d+)?)\b", m.string)), key=lambda d: d != "cpu")
    arg = re.search(r"(?:argument for argument|but got) (\w+)", m.string)
    params = {p["device"] for p in ctx.parameters if p.get("device")}
    inp = ctx.first_input()
    if params and inp and inp.get("device") and inp["device"] not in params:
        model_dev, in_dev = sorted(params)[0], inp["device"]
        msg = (f"{ctx.name}'s parameters are on {model_dev} but its input "
               f"{'`' + inp['name'] + '` ' if inp.get('name') else ''}is on {in_dev}.")
    else:
        msg = f"Tensors on different devices ({' and '.join(devs) or 'two devices'}) meet in {ctx.name}"
        msg += f" (argument `{arg.group(1)}`)." if arg else "."
    recs = [_fix("Move the input to the model's device.", "x = x.to(next(model.parameters()).device)"),
            _fix("Move the model once, before creating the optimizer, and every batch in the loop.",
                 "device = 'cuda' if torch.cuda.is_available() else 'cpu'\nmodel.to(device)\n"
                 "for x, y in loader:\n    x, y = x.to(device), y.to(device)"),
            _bp("Tensors created inside forward (masks, positions) should follow their input's device; keep "
                "constant tensors as buffers so model.to() moves them.",
                "mask = torch.ones(n, device=x.device)\nself.register_buffer('mask', mask)")]
    return Diagnosis(msg, recs, ["other"], 0.9, {"devices": devs})


def _no_cuda(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"The code asks for a CUDA device but this PyTorch has none ({m.group(0).strip()})."
    return Diagnosis(msg, [_fix("Pick the device at run time.",
                                "device = 'cuda' if torch.cuda.is_available() else 'cpu'\nmodel.to(device)"),
                           _fix("Load GPU checkpoints with a map_location.",
                                "torch.load(path, map_location='cpu')")], ["other"], 0.9)


def _inplace_version(ctx: Context, m: re.Match) -> Diagnosis:
    ttype, shape, node, have, want = m.group(1), _ints(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))
    op = node[: -len("Backward0")] if node.endswith("Backward0") else node
    named = op if op == node else f"{op} ({node})"
    msg = (f"A tensor autograd saved for backward was changed in place: the {shape_str(shape)} output of {named} "
           f"is at version {have}, expected {want}.")
    if ctx.in_backward:
        msg += " The error surfaced in backward, which has no forward frame"
        msg += f"; the tensor comes right after `{ctx.near_module}`." if ctx.near_module else "."
    where = f"`{ctx.near_module}`" if ctx.near_module else ctx.name
    recs = [_fix(f"Replace in-place operations on the output of {op} (after {where}): `x += ...` with "
                 f"`x = x + ...`, `x.mul_(...)` with `x = x * ...`, and nn.ReLU(inplace=True) with nn.ReLU().",
                 "x = x + residual  # not: x += residual\nnn.ReLU()  # not: nn.ReLU(inplace=True)"),
            _bp("To find the exact line, rerun one step under anomaly detection.",
                "with torch.autograd.detect_anomaly():\n    loss = criterion(model(x), y)\n    loss.backward()")]
    return Diagnosis(msg, recs, ["other"], 0.9, {"node": node, "tensor_shape": shape, "version": have,
                                                "expected_version": want})


def _backward_twice(ctx: Context, m: re.Match) -> Diagnosis:
    msg = ("Backward ran through a graph whose saved tensors were already freed by an earlier backward: "
           "a tensor from a previous step (hidden state, running loss, cached output) is still part of this loss.")
    return Diagnosis(msg, [
        _fix("Pass `retain_graph=True` only if you need a second backward; usually the loss is computed from a "
             "tensor kept from an earlier step: `.detach()` it.",
             "hidden = hidden.detach()  # between batches (RNNs)\nrunning = running.detach()"),
        _fix("Call backward once per graph: sum the losses first.", "(loss_a + loss_b).backward()"),
    ], ["detached_graph", "graph_kept_alive"], 0.85)


def _leaf_inplace(ctx: Context, m: re.Match) -> Diagnosis:
    params = ", ".join(f"`{p['name']}`" for p in ctx.parameters[:4])
    msg = (f"An in-place operation on a parameter (a leaf tensor that requires grad) in {ctx.name}"
           + (f" (parameters {params})" if params else "") + ": autograd cannot record it.")
    return Diagnosis(msg, [
        _fix("Update parameters by hand only under torch.no_grad().",
             "with torch.no_grad():\n    self.weight.clamp_(0, 1)"),
        _fix(f"Inside forward, use an out-of-place op in {ctx.name}.", "w = self.weight.clamp(0, 1)"),
    ], ["other"], 0.9)


def _view_inplace(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"An in-place operation on a view that autograd cannot track, in {ctx.name}: {m.group(0).strip()}"
    return Diagnosis(msg, [_fix("Use the out-of-place op or clone the view first.", "y = x[0].clone()\ny.relu_()"),
                           _fix("Replace nn.ReLU(inplace=True) with nn.ReLU() where it follows a view.")],
                     ["other"], 0.85)


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def _bytes(s: str | None) -> float | None:
    if not s:
        return None
    mm = re.match(r"([\d.]+)\s*([KMGT]i?B|B)", s)
    return float(mm.group(1)) * _UNITS.get(mm.group(2), 1) if mm else None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


_OOM_FIELDS = {
    "requested": r"Tried to allocate ([\d.]+ [KMGT]?i?B)",
    "total": r"total capacity of ([\d.]+ [KMGT]?i?B)|([\d.]+ [KMGT]?i?B) total capacity",
    "free": r"of which ([\d.]+ [KMGT]?i?B) is free|([\d.]+ [KMGT]?i?B) free",
    "allocated": r"([\d.]+ [KMGT]?i?B) is allocated by PyTorch|([\d.]+ [KMGT]?i?B) already allocated",
    "reserved_unallocated": r"([\d.]+ [KMGT]?i?B) is reserved by PyTorch but unallocated",
    "process_in_use": r"this process has ([\d.]+ [KMGT]?i?B) memory in use",
}


def _oom(ctx: Context, m: re.Match) -> Diagnosis:
    text = m.string
    nums: dict[str, float] = {}
    for k, rx in _OOM_FIELDS.items():
        f = re.search(rx, text)
        if f:
            nums[k] = _bytes(next(g for g in f.groups() if g))
    cpu = re.search(r"you tried to allocate (\d+) bytes", text)
    if cpu:
        nums["requested"] = float(cpu.group(1))
    dev = "CPU memory" if cpu or "DefaultCPUAllocator" in text else ("MPS memory" if "MPS" in text else "GPU memory")
    msg = f"Out of {dev}"
    if "requested" in nums:
        msg += f": tried to allocate {_human(nums['requested'])}"
        if "free" in nums:
            msg += f" with {_human(nums['free'])} free"
        if "total" in nums:
            msg += f" of {_human(nums['total'])}"
    msg += f" in {ctx.name}." if (ctx.module or ctx.module_type or ctx.module_hint) else "."
    inp = ctx.first_input()
    batch = inp["shape"][0] if inp and inp.get("shape") else None
    recs = []
    if batch and batch > 1:
        new = max(1, batch // 2)
        if nums.get("requested") and nums.get("total") and nums["requested"] > nums["total"]:
            new = max(1, int(batch * nums["total"] / nums["requested"] / 2))
        recs.append(_fix(f"Reduce the batch size (now {batch}; try {new}), and accumulate gradients over "
                         f"{max(2, batch // new)} steps to keep the effective batch.",
                         f"DataLoader(dataset, batch_size={new})"))
    elif nums.get("requested") and nums.get("total") and nums["requested"] > nums["total"]:
        recs.append(_fix(f"One allocation ({_human(nums['requested'])}) is larger than the whole device "
                         f"({_human(nums['total'])}): check the shapes of this operation (an accidental broadcast "
                         f"or outer product), then reduce batch or sequence length."))
    else:
        recs.append(_fix("Reduce the batch size (halve it) and accumulate gradients to keep the effective batch."))
    if dev == "GPU memory":
        recs.append(_opt("Train in mixed precision: activations take half the memory.",
                         "with torch.autocast(device_type='cuda', dtype=torch.bfloat16):\n    loss = criterion(model(x), y)"))
        recs.append(_opt("Recompute activations in backward instead of storing them (gradient checkpointing).",
                         "from torch.utils.checkpoint import checkpoint\nx = checkpoint(block, x, use_reentrant=False)"))
        ru, al = nums.get("reserved_unallocated"), nums.get("allocated")
        if ru and al and ru >= 0.1 * al:
            recs.append(_opt(f"{_human(ru)} is reserved but unallocated (fragmentation): let the allocator expand "
                             "segments.", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python train.py"))
        recs.append(_bp("Keep no tensors that hold the graph across steps (accumulate loss.item()), and evaluate under "
                        "torch.no_grad().", "running_loss += loss.item()"))
    else:
        recs.append(_bp("Look for an accidental broadcast or outer product in this operation: the requested size "
                        "is the product of the operands' shapes."))
    return Diagnosis(msg, recs, ["other"], 0.9, {"memory": nums, "memory_kind": dev})


_NAN_FIXES = {
    "Sqrt": ("sqrt has an infinite gradient at 0", "torch.sqrt(x + 1e-8)"),
    "Log": ("log has an infinite gradient at 0 and is NaN below 0", "torch.log(x.clamp_min(1e-8))"),
    "Div": ("division by a value near 0", "a / (b + 1e-8)"),
    "Pow": ("a fractional power of 0 or of a negative number", "x.clamp_min(1e-8).pow(p)"),
    "Norm": ("the norm of a zero vector has no gradient", "torch.sqrt((x * x).sum(-1) + 1e-8)"),
    "LinalgVectorNorm": ("the norm of a zero vector has no gradient", "torch.sqrt((x * x).sum(-1) + 1e-8)"),
    "Acos": ("acos has an infinite gradient at ±1", "torch.acos(x.clamp(-1 + 1e-7, 1 - 1e-7))"),
    "Asin": ("asin has an infinite gradient at ±1", "torch.asin(x.clamp(-1 + 1e-7, 1 - 1e-7))"),
    "Exp": ("exp overflows for large inputs", "torch.logsumexp(x, dim=-1)  # instead of x.exp().sum(-1).log()"),
}


def _anomaly_nan(ctx: Context, m: re.Match) -> Diagnosis:
    node = m.group(1)
    op = re.sub(r"Backward\d*$", "", node)
    why, code = _NAN_FIXES.get(op, ("a numerically unstable operation", None))
    msg = f"Anomaly detection: the gradient of {op} ({node}) became NaN"
    # An infinite gradient from an op applied later (sqrt(0), log(0)) times 0 here also gives NaN.
    later = next((re.sub(r"Backward\d*$", "", n) for n in ctx.upstream_ops
                  if re.sub(r"Backward\d*$", "", n) in _NAN_FIXES and re.sub(r"Backward\d*$", "", n) != "Exp"), None)
    if later is not None:
        why, code = _NAN_FIXES[later]
        msg += (f": the gradient reaching it is infinite because {later} is applied after it "
                f"({why}), and infinity times 0 is NaN.")
        op = later
    else:
        msg += f": {why}."
    if ctx.near_module:
        msg += f" It is computed from the output of `{ctx.near_module}`."
    recs = [_fix(f"Guard the {op} with an epsilon or clamp.", code)] if code else \
        [_fix(f"Find the input that makes {op} unstable and guard it with an epsilon or clamp.")]
    recs.append(_bp("Turn detect_anomaly off once found: it slows training several times."))
    return Diagnosis(msg, recs, ["numerically_unstable_op"], 0.9, {"node": node})


def _nonfinite_norm(ctx: Context, m: re.Match) -> Diagnosis:
    msg = "The gradient norm is NaN or infinite at clipping: some gradients are non-finite."
    return Diagnosis(msg, [
        _fix("Lower the learning rate or add warm-up; with fp16, use a GradScaler (it skips such steps).",
             "scaler = torch.amp.GradScaler()\nscaler.scale(loss).backward()\nscaler.unscale_(optimizer)"),
        _fix("Find where the first NaN appears: check the loss and the inputs for NaN before backward.",
             "assert torch.isfinite(loss), 'loss is not finite'"),
    ], ["learning_rate_too_high", "numerically_unstable_op"], 0.8)


def _nan_probs(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"Sampling in {ctx.name} got probabilities with NaN, inf or negative values."
    return Diagnosis(msg, [_fix("Sample from logits (softmax is stable) and check the logits for NaN first.",
                                "probs = torch.softmax(logits.float(), dim=-1)\nidx = torch.multinomial(probs, 1)")],
                     ["numerically_unstable_op"], 0.8)


def _nan_constraint(ctx: Context, m: re.Match) -> Diagnosis:
    param, dist = m.group(1), m.group(2)
    msg = (f"{dist} got NaN in its parameter `{param}` in {ctx.name}: the network's output that feeds it "
           "is already non-finite.")
    return Diagnosis(msg, [
        _fix("Find the layer that first outputs NaN (lower the learning rate, clip gradients) and keep scales positive.",
             "scale = torch.nn.functional.softplus(raw_scale) + 1e-5"),
        _fix("Clip the gradient norm.", "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"),
    ], ["numerically_unstable_op", "learning_rate_too_high"], 0.8)


def _nan_generic(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"Training stopped on a non-finite value in {ctx.name}: {_first_line(m.string)}"
    return Diagnosis(msg, [_fix("Find the first NaN: lower the learning rate, clip gradients, guard log/div/sqrt with an epsilon.",
                                "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)")],
                     ["numerically_unstable_op"], 0.6)


def _embedding_index(ctx: Context, m: re.Match) -> Diagnosis:
    n = ctx.module_args.get("num_embeddings")
    inp = ctx.first_input()
    mx = inp.get("max") if inp else None
    mn = inp.get("min") if inp else None
    if n is not None:
        msg = f"{ctx.name} is `{_module_call(ctx)}`: indices must be in [0, {n})"
        msg += f"; found max {mx}" if mx is not None else ""
        msg += f" and min {mn}" if mn is not None and mn < 0 else ""
        msg += "."
        recs = [_fix(f"Indices must be in [0, {n}); found max {mx}: make the table large enough "
                     f"(vocabulary size + special tokens) or fix the tokenizer.",
                     f"nn.Embedding({max(n, (mx or n - 1) + 1)}, {ctx.module_args.get('embedding_dim')})")]
    else:
        msg = f"An index is out of range in {ctx.name} (embedding or indexing): {_first_line(m.string).rstrip('.')}."
        recs = [_fix("Check that every index is in [0, num_embeddings): compare the vocabulary size with the "
                     "largest token id.", "assert ids.max() < model.embedding.num_embeddings")]
    return Diagnosis(msg, recs, ["label_problem"] if ctx.module_type != "Embedding" else ["other"], 0.9,
                     {"detail": "index_out_of_range", "index_max": mx, "index_min": mn, "num_embeddings": n})


def _target_bounds(ctx: Context, m: re.Match) -> Diagnosis:
    bad = int(m.group(1))
    inp, tgt = ctx.tensor("input"), ctx.tensor("target")
    n_cls = inp["shape"][1] if inp and inp.get("shape") and len(inp["shape"]) >= 2 else None
    mx = tgt.get("max") if tgt else None
    mn = tgt.get("min") if tgt else None
    found = f"found max {mx}" if mx is not None else f"found {bad}"
    if mn is not None and mn < 0:
        found += f", min {mn}"
    rng = f"[0, {n_cls})" if n_cls else "[0, num_classes)"
    msg = f"{_loss_name(ctx)}: targets must be class indices of dtype torch.long in {rng}; {found}."
    recs = [_fix(f"Targets must be class indices of dtype torch.long in {rng}; {found}."
                 + (" Labels look 1-based: subtract 1." if n_cls and mx == n_cls else ""),
                 "target = target - 1" if n_cls and mx == n_cls else None)]
    if n_cls and (mx or bad) >= n_cls:
        recs.append(_fix(f"Or the output layer has too few classes: it outputs {n_cls}, the labels need {(mx or bad) + 1}.",
                         f"nn.Linear(in_features, {(mx or bad) + 1})"))
    if bad < 0 or (mn is not None and mn < 0):
        recs.append(_fix("Negative labels: map them to [0, C), or pass ignore_index for padding labels.",
                         "nn.CrossEntropyLoss(ignore_index=-100)"))
    return Diagnosis(msg, recs, ["label_problem"], 0.9,
                     {"detail": "index_out_of_range", "num_classes": n_cls, "target_max": mx, "target_min": mn})


def _device_assert(ctx: Context, m: re.Match) -> Diagnosis:
    text = ctx.full_text or m.string
    if re.search(r"t >= 0 && t < n_classes|cur_target >= 0 && cur_target < n_classes", text):
        msg = ("A CUDA kernel assertion failed in a loss: a target class index is outside [0, num_classes). "
               "CUDA reports it asynchronously, so the traceback may point at a later line.")
        recs = [_fix("Targets must be class indices of dtype torch.long in [0, num_classes): check target.min() and target.max().",
                     "assert 0 <= y.min() and y.max() < logits.shape[1]")]
        causes = ["label_problem"]
    elif re.search(r"srcIndex < srcSelectDimSize|index out of bounds|indexSelect", text):
        msg = ("A CUDA kernel assertion failed in an index lookup (nn.Embedding or indexing): an index is outside the "
               "table. CUDA reports it asynchronously, so the traceback may point at a later line.")
        recs = [_fix("Check that every index is in [0, num_embeddings).", "assert ids.max() < model.embedding.num_embeddings")]
        causes = ["other"]
    else:
        msg = "A CUDA kernel assertion failed (device-side assert); the traceback may point at a later line."
        recs = []
        causes = ["other"]
    recs.append(_bp("Rerun with synchronous kernel launches (or on CPU) for the exact line and a readable error.",
                    "CUDA_LAUNCH_BLOCKING=1 python train.py"))
    return Diagnosis(msg, recs, causes, 0.8, {"detail": "device_side_assert"})


def _first_line(s: str) -> str:
    return (s.strip().splitlines() or [""])[0][:300]


# --- the table: (cause, regex, builder); the first match wins ---------------------------------------

Builder = Callable[[Context, re.Match], Diagnosis]


@dataclass(frozen=True)
class Pattern:
    cause: str
    regex: re.Pattern
    build: Builder


def _p(cause: str, rx: str, build: Builder) -> Pattern:
    return Pattern(cause, re.compile(rx, re.S), build)


PATTERNS: list[Pattern] = [
    # out of memory first: its messages mention sizes that look like shapes
    _p("out_of_memory", r"(?:CUDA|HIP|XPU|MPS backend) out of memory|CUDA error: out of memory|"
       r"DefaultCPUAllocator: can't allocate memory|OutOfMemoryError", _oom),
    # device before dtype: "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor)"
    _p("device_mismatch", r"Expected all tensors to be on the same device|"
       r"Input type \(torch\.(?:cuda\.)?\w+\) and (?:weight|bias) type \(torch\.cuda\.\w+\)|"
       r"Input type \(torch\.cuda\.\w+\) and (?:weight|bias) type \(torch\.\w+\)|"
       r"is not on the expected device|Expected object of device type|"
       r"indices should be either on cpu or on the same device|on different devices", _devices),
    _p("device_mismatch", r"Torch not compiled with CUDA enabled|"
       r"Attempting to deserialize object on a CUDA device but torch\.cuda\.is_available\(\) is False|"
       r"Found no NVIDIA driver", _no_cuda),
    _p("other", r"device-side assert triggered|Assertion `[^`]*` failed", _device_assert),
    # shapes
    _p("shape_mismatch", r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", _mm_shapes),
    _p("shape_mismatch", r"Expected size for first two dimensions of batch2 tensor to be: (\[[\d, ]+\]) but got: (\[[\d, ]+\])", _bmm_shapes),
    _p("shape_mismatch", r"size mismatch, got input \(\d+\), mat \(\d+x\d+\), vec \(\d+\)", _mv_shapes),
    _p("shape_mismatch", r"Given groups=(\d+), weight of size (\[[\d, ]+\]), expected input(\[[\d, ]+\]) to have (\d+) channels, but got (\d+) channels", _conv_channels),
    _p("shape_mismatch", r"Expected (\d)D \(unbatched\) or (\d)D \(batched\) input to (\w+), but got input of size: (\[[\d, ]*\])", _conv_ndim),
    _p("shape_mismatch", r"input\.size\(-1\) must be equal to input_size\. Expected (\d+), got (\d+)", _rnn_size),
    _p("shape_mismatch", r"(LSTM|GRU|RNN): Expected input to be 2D or 3D, got (\d)D", _rnn_ndim),
    _p("shape_mismatch", r"running_mean should contain (\d+) elements not (\d+)", _norm_features),
    _p("shape_mismatch", r"Target size \(torch\.Size\((\[[\d, ]*\])\)\) must be the same as input size \(torch\.Size\((\[[\d, ]*\])\)\)", _target_shape),
    _p("shape_mismatch", r"Expected input batch_size \((\d+)\) to match target batch_size \((\d+)\)", _batch_size),
    _p("shape_mismatch", r"The size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton dimension (\d+)", _broadcast),
    # dtypes
    _p("dtype_mismatch", r"mat1 and mat2 must have the same dtype, but got (\w+) and (\w+)", _input_vs_param_dtype),
    _p("dtype_mismatch", r"expected (?:mat1 and mat2|m1 and m2) to have the same dtype, but got: ([\w:]+) != ([\w:]+)", _input_vs_param_dtype),
    _p("dtype_mismatch", r"Input type \(([\w.]+)\) and (?:weight|bias) type \(([\w.:]+)\) should be the same", _input_vs_param_dtype),
    _p("dtype_mismatch", r"expected target dtype to be Long or Byte, but got (\w+)|expected scalar type Long but found (\w+)", _target_needs_long),
    _p("dtype_mismatch", r"Found dtype (\w+) but expected (\w+)", _target_needs_float),
    _p("dtype_mismatch", r"result type (\w+) can't be cast to the desired output type (\w+)", _cast_target),
    _p("dtype_mismatch", r"'indices' to have one of the following scalar types: Long, Int; but got ([\w.]+) instead", _index_dtype),
    _p("dtype_mismatch", r"expected scalar type \w+ but found \w+|must have the same dtype|should be the same dtype", _generic_dtype),
    # in-place and autograd
    _p("inplace_autograd", r"modified by an inplace operation: \[([\w.]+) (\[[\d, ]*\])\], which is output \d+ of (\w+), is at version (\d+); expected version (\d+)", _inplace_version),
    _p("inplace_autograd", r"Trying to backward through the graph a second time", _backward_twice),
    _p("inplace_autograd", r"a (?:view of a )?leaf Variable that requires grad is being used in an in-place operation", _leaf_inplace),
    _p("inplace_autograd", r"is a view and (?:is being|its base or another view of its base has been) modified inplace", _view_inplace),
    # non-finite values
    _p("nan_detected", r"Function '(\w+)' returned nan values in its \d+th output", _anomaly_nan),
    _p("nan_detected", r"The total norm of order [\d.]+ for gradients from `parameters` is non-finite", _nonfinite_norm),
    _p("nan_detected", r"probability tensor contains either `inf`, `nan` or element < 0", _nan_probs),
    _p("nan_detected", r"Expected parameter (\w+) \(Tensor of shape .*?\) of distribution (\w+)\(.*?found invalid values:\s*\n?.*\bnan\b", _nan_constraint),
    # index out of range (cause other; evidence.detail says which)
    _p("other", r"index out of range in self|index \d+ is out of bounds for dimension", _embedding_index),
    _p("other", r"Target (-?\d+) is out of bounds", _target_bounds),
    _p("nan_detected", r"\b(?:nan|NaN|non-finite|inf)\b.*\b(?:loss|gradient|grad|output|value)s?\b|"
       r"\b(?:loss|gradient|grad)s?\b.*\b(?:nan|NaN|non-finite)\b", _nan_generic),
]

_CONTRACT_CAUSES = {"wrong_loss_function", "numerically_unstable_op", "label_problem", "detached_graph",
                    "graph_kept_alive", "learning_rate_too_high", "other"}


def match(ctx: Context) -> tuple[str, Diagnosis]:
    """The first pattern that matches the message: its cause and diagnosis (``other`` when none does)."""
    text = ctx.message
    for p in PATTERNS:
        m = p.regex.search(text)
        if m:
            return p.cause, p.build(ctx, m)
    where = f" (raised at {ctx.where})" if ctx.where else ""
    msg = f"Training raised {ctx.error_type}{where} in {ctx.name}: {_first_line(text)}"
    return "other", Diagnosis(msg, [_fix(f"Read the line that raised{where}; modeldebug has no specific advice for this error.")],
                              ["other"], 0.5)


# --- from an exception object ------------------------------------------------------------------------


def module_names_of(*models: Any) -> dict[int, str]:
    """``id(obj) -> qualified name`` for every module and parameter of the models.

    Pass modules, or ``(prefix, module)`` pairs when several models are watched (``("gen.", G)``).
    """
    out: dict[int, str] = {}
    for item in models:
        prefix, model = item if isinstance(item, tuple) else ("", item)
        for name, mod in model.named_modules():
            out.setdefault(id(mod), (prefix + name).rstrip(".") or type(mod).__name__)
        for name, p in model.named_parameters():
            out.setdefault(id(p), prefix + name)
    return out


def _names_map(module_names: Any) -> Mapping[int, str]:
    """Accept a mapping, a model (or several), or anything else (ignored: names unknown)."""
    if module_names is None:
        return {}
    if isinstance(module_names, Mapping):
        return module_names
    try:
        from torch import nn
    except ImportError:  # pragma: no cover
        return {}
    if isinstance(module_names, nn.Module):
        return module_names_of(module_names)
    if isinstance(module_names, (list, tuple)) and module_names and all(
            isinstance(m, (nn.Module, tuple)) for m in module_names):
        return module_names_of(*module_names)
    return {}


def describe_tensor(name: str, t: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype), "device": str(t.device)}
    try:
        if not t.is_floating_point() and not t.is_complex() and t.device.type in ("cpu",) and 0 < t.numel() <= 50_000_000:
            d["min"], d["max"] = int(t.min()), int(t.max())
    except Exception:  # a broken tensor must not break the diagnosis
        pass
    return d


def _tensors_of(items: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    import torch

    out: list[dict[str, Any]] = []
    for name, v in items:
        if isinstance(v, torch.Tensor):
            out.append(describe_tensor(name, v))
        elif isinstance(v, (tuple, list)) and len(v) <= 8:
            for i, x in enumerate(v):
                if isinstance(x, torch.Tensor):
                    out.append(describe_tensor(f"{name}[{i}]", x))
        if len(out) >= _MAX_TENSORS:
            break
    return out


def _frame_args(frame) -> list[tuple[str, Any]]:
    code = frame.f_code
    n = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
    loc = frame.f_locals
    return [(k, loc[k]) for k in code.co_varnames[:n] if k != "self" and k in loc]


def _is_torch_file(path: str) -> bool:
    p = path.replace("\\", "/")
    return "/torch/" in p and ("site-packages" in p or "dist-packages" in p or "/lib/python" in p or "/torch/nn/" in p)


def _module_args(module: Any) -> dict[str, Any]:
    out = {}
    for k in _MODULE_ARGS:
        v = getattr(module, k, None)
        if isinstance(v, (int, bool)) or (isinstance(v, tuple) and all(isinstance(x, int) for x in v)):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _walk_graph(root, limit: int = 20000):
    seen, stack = set(), [root]
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        for nxt, _ in getattr(node, "next_functions", ()) or ():
            stack.append(nxt)


def _locate_node(loss, node_name: str, names: Mapping[int, str]) -> tuple[str | None, list[str]]:
    """For the first graph node named ``node_name`` (``Sigmoid`` matches ``SigmoidBackward0``): the
    module whose parameters sit closest below it, and the op names on the path from the loss down
    to it (nearest first)."""
    from collections import deque

    if loss is None or getattr(loss, "grad_fn", None) is None:
        return None, []
    parent: dict[int, Any] = {id(loss.grad_fn): None}
    queue, target = deque([loss.grad_fn]), None
    while queue and len(parent) < 20000:
        node = queue.popleft()
        if node.name().startswith(node_name):
            target = node
            break
        for nxt, _ in node.next_functions or ():
            if nxt is not None and id(nxt) not in parent:
                parent[id(nxt)] = node
                queue.append(nxt)
    if target is None:
        return None, []
    path, p = [], parent.get(id(target))
    while p is not None:
        path.append(p.name())
        p = parent.get(id(p))
    queue, seen = deque([target]), set()
    while queue and len(seen) < 20000:
        node = queue.popleft()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if var is not None and id(var) in names:
            pname = names[id(var)]
            return (pname.rsplit(".", 1)[0] if "." in pname else pname), path
        queue.extend(n for n, _ in (node.next_functions or ()))
    return None, path


def context_from_exception(exc: BaseException, module_names: Any = None) -> Context:
    """What the traceback's frames say about where ``exc`` was raised (no hooks, no reruns)."""
    from torch import nn

    import torch

    names = _names_map(module_names)
    ctx = Context(error_type=type(exc).__name__, message=str(exc))
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    module = module_frame = None
    op_frame = None
    loss = None
    for i in range(len(frames) - 1, -1, -1):  # innermost first
        frame, lineno = frames[i]
        code = frame.f_code
        if ctx.where is None and not _is_torch_file(code.co_filename):
            ctx.where = f"{code.co_filename}:{lineno}"
        if i == 0 and len(frames) > 1:
            # The frame that caught the exception is still running: reading its f_locals would
            # snapshot (and keep alive) its locals. Every other frame has finished.
            continue
        loc = frame.f_locals
        this = loc.get("self")
        if isinstance(this, nn.Module):
            if module is None:
                module = this
            if this is module and code.co_name == "forward" and module_frame is None:
                module_frame = frame
        elif module is None and op_frame is None and _is_torch_file(code.co_filename) and code.co_name not in (
                "_engine_run_backward", "backward", "_call_impl", "_wrapped_call_impl"):
            op_frame = frame
        if code.co_name == "backward" and isinstance(this, torch.Tensor) and loss is None:
            loss = this
        if code.co_name in ("_engine_run_backward", "backward", "grad") and "autograd" in code.co_filename:
            ctx.in_backward = True
            tensors = loc.get("tensors") or loc.get("outputs") or loc.get("t_outputs")
            if loss is None and isinstance(tensors, (tuple, list)) and tensors and isinstance(tensors[0], torch.Tensor):
                loss = tensors[0]
    if op_frame is None:  # e.g. F.cross_entropy called by nn.CrossEntropyLoss.forward
        for frame, _ in reversed(frames[1:]):
            if _is_torch_file(frame.f_code.co_filename) and not isinstance(frame.f_locals.get("self"), nn.Module) \
                    and frame.f_code.co_name not in ("_engine_run_backward", "backward", "_call_impl", "_wrapped_call_impl"):
                op_frame = frame
                break
            if isinstance(frame.f_locals.get("self"), nn.Module):
                break
    if op_frame is not None:
        ctx.function = op_frame.f_code.co_name
        ctx.op_inputs = _tensors_of(_frame_args(op_frame))
    if module is not None:
        ctx.module_type = type(module).__name__
        ctx.module = names.get(id(module))
        ctx.module_args = _module_args(module)
        own = list(module.named_parameters(recurse=False)) or list(module.named_parameters())[:_MAX_TENSORS]
        ctx.parameters = _tensors_of(own)
        frame = module_frame
        if frame is not None:
            args = _frame_args(frame)
            ctx.inputs = _tensors_of(args)
            arg_names = {k for k, _ in args}
            ctx.local_tensors = _tensors_of((k, v) for k, v in frame.f_locals.items()
                                            if k not in arg_names and k != "self")
    if ctx.in_backward and module is None:
        node = re.search(r"output \d+ of (\w+)|Function '(\w+)'", ctx.message)
        if node:
            try:
                ctx.near_module, ctx.upstream_ops = _locate_node(loss, node.group(1) or node.group(2), names)
            except Exception:  # the graph may be half freed: the message still stands
                ctx.near_module = None
    return ctx


def diagnose_exception(exc: BaseException, *, module_names: Any = None, step: int | None = None) -> Finding:
    """A ``runtime_error`` Finding for an exception raised while training.

    ``module_names``: ``id(module or parameter) -> qualified name`` (:func:`module_names_of`), or the
    model itself; without it the module is named by its class.
    """
    if not isinstance(exc, BaseException):
        raise TypeError(f"Expected `exc` to be an exception but got {type(exc).__name__}")
    try:
        ctx = context_from_exception(exc, module_names)
    except Exception:  # never fail to explain: fall back to the message alone
        ctx = Context(error_type=type(exc).__name__, message=str(exc))
    return _finding(ctx, step)


# --- from text -------------------------------------------------------------------------------------

_EXC_LINE = re.compile(r"^((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning))(?::[ \t]?(.*))?$")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)[ \t]*(?:\n|$)'
                    r'(?P<src>[ \t]+\S.*)?(?:\n(?P<carets>[ \t]*[~^]+[~^ \t]*)$)?', re.M)
_TORCH_MODULE_FILES = {"linear.py": "Linear", "sparse.py": "Embedding", "batchnorm.py": "BatchNorm",
                       "normalization.py": "LayerNorm", "activation.py": "activation", "container.py": None,
                       "transformer.py": "Transformer", "pooling.py": "Pooling", "dropout.py": "Dropout"}


def context_from_text(text: str) -> Context:
    """What a saved traceback says: the last exception line and the frames before it."""
    lines = text.strip().splitlines()
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if _EXC_LINE.match(lines[i]):
            start = i
            # a multi-line message continues below; keep scanning up only if this block is a chained one
            break
    if start is None:
        error_type, message, tb_text = "Error", text.strip(), ""
    else:
        mm = _EXC_LINE.match(lines[start])
        error_type = mm.group(1).rsplit(".", 1)[-1]
        message = "\n".join([mm.group(2) or ""] + lines[start + 1:]).strip()
        tb_text = "\n".join(lines[:start])
        marker = max(tb_text.rfind("During handling of the above exception"),
                     tb_text.rfind("The above exception was the direct cause"))
        if marker >= 0:  # chained: the frames of the last exception only
            tb_text = tb_text[marker:]
    ctx = Context(error_type=error_type, message=message, from_text=True, full_text=text)
    frames = [(f.group("file"), int(f.group("line")), f.group("func"), (f.group("src") or "").strip(),
               _called(f.group("src"), f.group("carets"))) for f in _FRAME.finditer(tb_text)]
    ctx.in_backward = any(func in ("_engine_run_backward", "backward") and "autograd" in file
                          for file, _, func, _, _ in frames)
    for file, line, func, src, called in reversed(frames):  # innermost first
        base = file.replace("\\", "/").rsplit("/", 1)[-1]
        if _is_torch_file(file):
            if "/nn/modules/" in file.replace("\\", "/") and ctx.module_type is None:
                ctx.module_type = _type_from_torch_frame(base, func, src)
            elif "/nn/functional.py" in file.replace("\\", "/") and ctx.function is None and ctx.module_type is None:
                ctx.function = func
            continue
        if ctx.where is None:
            ctx.where = f"{file}:{line}"
        if called and (ctx.module_type or ctx.function or func == "forward"):
            ctx.module_hint = called
            break
    if ctx.module_type is None and ctx.function in _LOSS_FUNCS:
        ctx.module_type = _LOSS_FUNCS[ctx.function]
    ctx.unknown = ["the module's qualified name" if not ctx.module else None,
                   "the shapes, dtypes and devices of its inputs and parameters"]
    ctx.unknown = [u for u in ctx.unknown if u]
    return ctx


def _called(src: str | None, carets: str | None) -> str | None:
    """The ``self.<attr>`` a source line calls: the one Python's carets point at (3.11+), or the only one."""
    if not src:
        return None
    calls = list(re.finditer(r"self\.([\w.]+)\s*\(", src))
    if carets:
        marks = [i for i, ch in enumerate(carets) if ch in "^~"]
        if marks:
            lo, hi = marks[0], marks[-1]
            inside = [c for c in calls if lo <= c.start() <= hi]
            if inside:
                # the outermost call that starts under the carets is the one the frame runs
                return inside[0].group(1)
    if len(calls) == 1:
        return calls[0].group(1)
    return None


def _type_from_torch_frame(base: str, func: str, src: str) -> str | None:
    if base == "conv.py":
        m = re.search(r"conv(?:_transpose)?(\d)d", src)
        return f"Conv{m.group(1)}d" if m else "Conv"
    if base == "rnn.py":
        return "RNN"  # LSTM/GRU/RNN share the file; messages often name the class
    if base == "loss.py":
        m = re.search(r"F\.(\w+)\(", src)
        return _LOSS_FUNCS.get(m.group(1), "Loss") if m else "Loss"
    return _TORCH_MODULE_FILES.get(base)


def diagnose_text(text: str) -> Finding:
    """A ``runtime_error`` Finding from a traceback saved as text (or just its last line)."""
    if not isinstance(text, str):
        raise TypeError(f"Expected `text` to be a str but got {type(text).__name__}")
    return _finding(context_from_text(text), None)


def explain(exc_or_text: BaseException | str | bytes, *, module_names: Any = None, step: int | None = None) -> Finding:
    """Explain an exception object or a traceback's text: ``md.explain(exc)``."""
    if isinstance(exc_or_text, BaseException):
        return diagnose_exception(exc_or_text, module_names=module_names, step=step)
    if isinstance(exc_or_text, bytes):
        exc_or_text = exc_or_text.decode("utf-8", "replace")
    if isinstance(exc_or_text, str):
        return diagnose_text(exc_or_text)
    raise TypeError(f"Expected an exception or a traceback's text but got {type(exc_or_text).__name__}")


def _finding(ctx: Context, step: int | None) -> Finding:
    cause, d = match(ctx)
    if ctx.module_type == "RNN" and (m := re.match(r"(LSTM|GRU|RNN):", ctx.message)):
        ctx.module_type = m.group(1)
    message = d.message
    if ctx.from_text and ctx.unknown:
        if ctx.module_hint and ctx.where:
            message += f" It was called as `self.{ctx.module_hint}(...)` at {ctx.where}."
        message += f" From the text alone, modeldebug cannot know {' or '.join(ctx.unknown)}."
    elif ctx.in_backward and not ctx.module and "backward" not in message:
        message += " Raised in backward: there is no forward frame to name the layer."
    if message[:1].islower():
        message = message[0].upper() + message[1:]
    causes = [c for c in d.causes if c in _CONTRACT_CAUSES] or ["other"]
    evidence = {
        "error_type": ctx.error_type,
        "cause": cause,
        "module": ctx.module or ctx.module_type,
        "module_type": ctx.module_type,
        "module_args": ctx.module_args or None,
        "inputs": ctx.inputs,
        "parameters": ctx.parameters,
        "function": ctx.function,
        "op_inputs": ctx.op_inputs,
        "in_backward": ctx.in_backward,
        "near_module": ctx.near_module,
        "module_hint": ctx.module_hint,
        "raised_at": ctx.where,
        "from_text": ctx.from_text,
        "error_message": ctx.message[:4000],
    }
    always = ("error_type", "cause", "module", "module_type", "inputs", "parameters", "error_message", "from_text")
    evidence = {k: v for k, v in evidence.items() if k in always or v not in (None, [], {}, False)}
    evidence.update({k: v for k, v in d.evidence.items() if v is not None})
    return Finding(
        kind="runtime_error", severity="high", confidence=d.confidence,
        location=ctx.module or ctx.near_module or ctx.module_type or ctx.module_hint,
        step=step, message=message, evidence=_plain(evidence), causes=causes,
        recommendations=d.recommendations,
    )


def _plain(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


__all__ = ["CAUSES", "PATTERNS", "Context", "Diagnosis", "Pattern", "context_from_exception", "context_from_text",
           "describe_tensor", "diagnose_exception", "diagnose_text", "explain", "match", "module_names_of"]
