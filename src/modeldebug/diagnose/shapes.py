"""Builders for shape errors: matrix products, convolutions, recurrent layers, norms, broadcasting, losses."""

from __future__ import annotations

import math
import re

from modeldebug.diagnose.context import (
    Context,
    Diagnosis,
    find_local,
    ints,
    kernel_arg,
    LOSS_FUNCS,
    loss_name,
    module_call,
    shape_str,
    var_name,
)
from modeldebug.findings import best_practice, fix


def mm_shapes(ctx: Context, m: re.Match) -> Diagnosis:
    a, b, c, d = (int(m.group(i)) for i in range(1, 5))
    if ctx.module_type == "Linear" or (ctx.module_type is None and ctx.function == "linear"):
        n_in, n_out = ctx.module_args.get("in_features", c), ctx.module_args.get("out_features", d)
        t = ctx.first_input()
        got = f"input of shape {shape_str(t['shape'])}" if t and t.get("shape") else f"input with {b} features (rows {a})"
        layer = f"is `nn.Linear({n_in}, {n_out})`"
        msg = (f"{ctx.name} {layer} and received {got}: the features reaching it have {b} values, "
               f"not {n_in}; use `nn.Linear({b}, {n_out})` or check the flattening before it.")
        return Diagnosis(msg, [
            fix(f"Make the layer take {b} input features (or compute in_features from a dummy forward).",
                 f"nn.Linear({b}, {n_out})"),
            fix(f"Or check the reshape/flatten before {ctx.name}: it must produce {n_in} features per sample.",
                 f"{var_name(ctx)} = torch.flatten({var_name(ctx)}, 1)  # then {var_name(ctx)}.shape[1] must be {n_in}"),
            best_practice("Let PyTorch infer the input size on the first call.", f"nn.LazyLinear({n_out})"),
        ], ["other"], 0.95, {"expected_features": n_in, "got_features": b})
    # a plain matmul: left is a x b, right is c x d
    msg = (f"Matrix multiply in {ctx.name}: left operand is {a}x{b}, right is {c}x{d}; the inner sizes "
           f"({b} and {c}) must match.")
    recs = []
    if d == b:
        right = find_local(ctx, lambda s: len(s) >= 2 and s[-2] == c and s[-1] == d)
        name = right["name"] if right else "the right operand"
        msg += f" The right operand ({c}x{d}) looks transposed."
        recs.append(fix(f"Transpose {name}: use {name}.transpose(-2, -1) ({d}x{c}).",
                         f"{name if right else 'b'}.transpose(-2, -1)"))
    recs.append(fix(f"Reshape the operands so the left's last size equals the right's first size ({b} vs {c})."))
    if ctx.module_type is None and ctx.function is None:  # a bare message: it may well be a Linear layer
        recs.insert(0, fix(f"If this is an nn.Linear({c}, {d}) (most such errors are), the features reaching it "
                            f"have {b} values: use nn.Linear({b}, {d}) or check the flattening before it.",
                            f"nn.Linear({b}, {d})"))
    return Diagnosis(msg, recs, ["other"], 0.85, {"left": [a, b], "right": [c, d]})


def bmm_shapes(ctx: Context, m: re.Match) -> Diagnosis:
    exp, got = ints(m.group(1)), ints(m.group(2))
    msg = (f"Batched matrix multiply in {ctx.name}: the right operand should start with sizes {shape_str(exp)} "
           f"(batch, then the left operand's last size {exp[-1]}) but starts with {shape_str(got)}.")
    recs = []
    right = find_local(ctx, lambda s: len(s) >= 3 and s[:-1] == got and s[-1] == exp[-1])
    if right is not None:
        name = right["name"]
        msg += f" `{name}` has shape {shape_str(right['shape'])}: it looks transposed."
        recs.append(fix(f"Transpose `{name}` before the product (e.g. q @ k^T in attention).",
                         f"{name}.transpose(-2, -1)"))
    recs.append(fix(f"The left operand's last size ({exp[-1]}) must equal the right operand's size at dim -2 "
                     f"({got[-1]}): check which dimensions you multiply."))
    return Diagnosis(msg, recs, ["other"], 0.85, {"expected": exp, "got": got})


def mv_shapes(ctx: Context, m: re.Match) -> Diagnosis:
    return Diagnosis(f"Matrix-vector product in {ctx.name} with mismatched sizes: {m.group(0)}.",
                     [fix("The vector's length must equal the matrix's number of columns: check the operand order "
                           "or transpose the matrix.")], ["other"], 0.8)


def conv_channels(ctx: Context, m: re.Match) -> Diagnosis:
    groups, weight, inp, exp_c, got_c = int(m.group(1)), ints(m.group(2)), ints(m.group(3)), int(m.group(4)), int(m.group(5))
    nd = len(weight) - 2
    ctype = ctx.module_type if (ctx.module_type or "").startswith("Conv") else f"Conv{nd}d"
    out_c, k = weight[0], kernel_arg(weight[2:])
    layer = f"nn.{ctype}({exp_c}, {out_c}, kernel_size={k})"
    msg = (f"{ctx.name} is `{layer}` and expects {exp_c} input channels, but received input of shape "
           f"{shape_str(inp)} with {got_c} channels (dim 1).")
    recs = []
    # Square images in N, C, H, W have H == W; a channels-last N, H, W, C batch has H == W at dims 1, 2.
    channels_first = len(inp) >= 4 and inp[-2] == inp[-1] and inp[1] != inp[2]
    if len(inp) >= 2 and inp[-1] == exp_c and not channels_first:
        perm = ", ".join(["0", str(len(inp) - 1)] + [str(i) for i in range(1, len(inp) - 1)])
        msg += f" The input looks channels-last (size {exp_c} is its last dimension)."
        recs.append(fix("Move channels to dim 1 (PyTorch convolutions take N, C, H, W).",
                         f"{var_name(ctx)} = {var_name(ctx)}.permute({perm}).contiguous()"))
    recs.append(fix(f"Make the layer take {got_c} channels.", f"nn.{ctype}({got_c}, {out_c}, kernel_size={k})"))
    if got_c == 1 and exp_c == 3:
        recs.append(fix("Or repeat grayscale images to 3 channels.", f"{var_name(ctx)} = {var_name(ctx)}.repeat(1, 3, 1, 1)"))
    else:
        recs.append(fix(f"Or check the layer before {ctx.name}: it must output {exp_c} channels."))
    return Diagnosis(msg, recs, ["other"], 0.95, {"expected_channels": exp_c, "got_channels": got_c, "groups": groups})


def conv_ndim(ctx: Context, m: re.Match) -> Diagnosis:
    want_unb, want_b, op, shape = int(m.group(1)), int(m.group(2)), m.group(3), ints(m.group(4))
    msg = (f"{ctx.name} ({op}) takes {want_b}-D input (N, C, spatial...) or {want_unb}-D unbatched, but received "
           f"{len(shape)}-D input of shape {shape_str(shape)}.")
    recs, v = [], var_name(ctx)
    c = ctx.module_args.get("in_channels")
    nsp = want_b - 2
    if len(shape) == 2 and c:
        per = shape[1] // c if shape[1] % c == 0 else None
        side = round(per ** (1 / nsp)) if per else None
        if side and side ** nsp == per:
            target = [shape[0], c] + [side] * nsp
            msg += f" Its {shape[1]} values per sample look like a flattened {shape_str(target[1:])} image."
            recs.append(fix(f"Restore the image shape before {ctx.name}.",
                             f"{v} = {v}.view({', '.join(str(s) for s in [-1] + target[1:])})"))
    if len(shape) < want_unb:
        recs.append(fix(f"Add the missing dimension(s): a batch of single-channel inputs needs {v}.unsqueeze(1).",
                         f"{v} = {v}.unsqueeze(1)"))
    elif len(shape) > want_b:
        recs.append(fix("Remove the extra dimension(s): squeeze size-1 dims or merge dims into the batch.",
                         f"{v} = {v}.flatten(0, {len(shape) - want_b})"))
    if not recs:
        recs.append(fix(f"Reshape the input to {want_b}-D (N, C, spatial...)."))
    return Diagnosis(msg, recs, ["other"], 0.9, {"expected_ndim": want_b, "got_shape": shape})


def rnn_size(ctx: Context, m: re.Match) -> Diagnosis:
    exp, got = int(m.group(1)), int(m.group(2))
    t = ctx.module_type if ctx.module_type in ("LSTM", "GRU", "RNN") else "LSTM"
    hidden = ctx.module_args.get("hidden_size")
    inp = ctx.first_input()
    got_s = f" of shape {shape_str(inp['shape'])}" if inp and inp.get("shape") else ""
    bf = ctx.module_args.get("batch_first")
    msg = f"{ctx.name} is `{module_call(ctx)}` and expects" if hidden else f"{ctx.name} ({t}) expects"
    msg += f" {exp} features per time step (input_size) but received input{got_s} with {got}."
    layer = f"nn.{t}({got}, {hidden}{', batch_first=True' if bf else ''})" if hidden else f"nn.{t}(input_size={got}, ...)"
    recs = [fix(f"Make input_size match the features: {layer}.", layer)]
    if inp and inp.get("shape") and len(inp["shape"]) == 3 and exp in inp["shape"][:2]:
        recs.insert(0, fix(f"The input has size {exp} at another dimension: the (batch, time, features) order "
                            f"looks wrong; check batch_first={bool(bf)} or permute the input.",
                            f"{var_name(ctx)} = {var_name(ctx)}.transpose(1, 2)"))
    else:
        recs.append(fix(f"Or check the embedding/projection before {ctx.name}: it must output {exp} features."))
    return Diagnosis(msg, recs, ["other"], 0.95, {"expected_features": exp, "got_features": got})


def rnn_ndim(ctx: Context, m: re.Match) -> Diagnosis:
    t, got = m.group(1), int(m.group(2))
    inp = ctx.first_input()
    shape = inp.get("shape") if inp else None
    msg = f"{ctx.name} ({t}) takes 2-D (time, features) or 3-D (batch, time, features) input but received {got}-D"
    msg += f" input of shape {shape_str(shape)}." if shape else " input."
    recs = []
    v = var_name(ctx)
    if shape and len(shape) > 3:
        feats = math.prod(shape[2:])
        recs.append(fix(f"Merge the trailing dimensions into features ({feats} per step) and use input_size={feats}.",
                         f"{v} = {v}.flatten(2)  # -> {shape_str(shape[:2] + [feats])}"))
    else:
        recs.append(fix("Reshape the input to (batch, time, features).", f"{v} = {v}.unsqueeze(-1)"))
    return Diagnosis(msg, recs, ["other"], 0.9, {"got_ndim": got})


def norm_features(ctx: Context, m: re.Match) -> Diagnosis:
    got, exp = int(m.group(1)), int(m.group(2))
    t = ctx.module_type if (ctx.module_type or "").startswith("BatchNorm") else "BatchNorm1d"
    msg = (f"{ctx.name} is `nn.{t}({exp})` but the input has {got} features/channels at dim 1.")
    return Diagnosis(msg, [fix(f"Use nn.{t}({got}) (num_features must equal the input's size at dim 1).",
                                f"nn.{t}({got})"),
                           fix(f"Or check the layer before {ctx.name}: it must output {exp} features.")],
                     ["other"], 0.9, {"expected_features": exp, "got_features": got})


def broadcast(ctx: Context, m: re.Match) -> Diagnosis:
    a, b, dim = int(m.group(1)), int(m.group(2)), int(m.group(3))
    loss = ctx.function in LOSS_FUNCS
    matmul = not loss and bool(ctx.source and re.search(r"@|\b(?:matmul|bmm|einsum)\b", ctx.source))
    if loss:
        msg = f"{LOSS_FUNCS[ctx.function]}"
    elif matmul:  # the batch dimensions of a product broadcast like an elementwise operation's
        msg = f"Batched matrix multiply in {ctx.name} (`{ctx.source}`)"
    else:
        msg = f"Elementwise operation in {ctx.name}"
    msg += f": the operands have sizes {a} and {b} at dimension {dim} and cannot broadcast."
    recs, causes = [], ["other"]
    if loss:
        inp, tgt = ctx.tensor("input"), ctx.tensor("target")
        if inp and tgt:
            msg += f" Input is {shape_str(inp['shape'])}, target {shape_str(tgt['shape'])}."
            if len(inp["shape"]) == len(tgt["shape"]) + 1 and str(tgt.get("dtype", "")).startswith("torch.int"):
                causes = ["wrong_loss_function"]
                recs.append(fix(f"The targets look like class indices ({tgt['dtype']}): use a classification loss.",
                                 "loss = nn.CrossEntropyLoss()(logits, target)"))
        recs.append(fix("Give input and target the same shape (e.g. squeeze a trailing size-1 dim or one-hot the target)."))
    else:
        pair = [t for t in ctx.local_tensors + ctx.inputs if t.get("shape") and len(t["shape"]) > dim
                and t["shape"][dim] in (a, b)]
        if pair:
            msg += " Tensors here: " + ", ".join(f"`{t['name']}` {shape_str(t['shape'])}" for t in pair[:4]) + "."
        permuted = _permuted(pair)
        if permuted:
            moved, like = permuted
            msg += (f" `{moved['name']}` {shape_str(moved['shape'])} holds the sizes of `{like['name']}` "
                    f"{shape_str(like['shape'])} in another order: it misses the same transpose.")
            recs.append(fix(f"Lay out `{moved['name']}` like `{like['name']}` (e.g. (batch, heads, time, head_dim) "
                            "for attention) before the operation.",
                            f"{moved['name']} = {moved['name']}.transpose(1, 2)" if _swaps_1_2(moved, like) else None))
        recs.append(fix(f"Make the sizes at dimension {dim} equal ({a} vs {b}): e.g. a projection "
                         f"nn.Linear({b}, {a}) on the second operand, or fix the layer that produced it."))
    return Diagnosis(msg, recs, causes, 0.85, {"sizes": [a, b], "dim": dim})


def cat_sizes(ctx: Context, m: re.Match) -> Diagnosis:
    """torch.cat/stack of tensors whose other dimensions differ (a skip connection of another resolution)."""
    stack = m.group(0).startswith("stack")
    dim = None if stack else int(m.group(1))
    exp, got, index = (int(m.group(2)), int(m.group(3)), int(m.group(4))) if not stack else (None, None, None)
    op = "torch.stack" if stack else "torch.cat"
    msg = (f"The {op} in {ctx.name} needs tensors of the same shape" if stack else
           f"The torch.cat in {ctx.name} joins tensors along dimension {dim}, so every other dimension must match; "
           f"tensor {index} in the list has size {got} where the first has {exp}")
    tensors = [t for t in ctx.local_tensors + ctx.inputs if t.get("shape")]
    if not stack:
        at = [i for t in tensors for i, n in enumerate(t["shape"]) if n == exp and i != dim]
        pair = [t for t in tensors if any(i < len(t["shape"]) and t["shape"][i] in (exp, got) for i in at)]
        tensors = pair or tensors
    if tensors:
        msg += ". Tensors here: " + ", ".join(f"`{t['name']}` {shape_str(t['shape'])}" for t in tensors[:4])
    msg += "."
    recs = [fix(f"Pass tensors that agree outside dimension {dim}: take the one of the matching resolution "
                "(the skip connection of the same stage), or resize one to the other."
                if not stack else "Give every tensor the same shape before stacking (pad or crop them).",
                "skip = F.interpolate(skip, size=x.shape[2:])  # or crop: skip[..., :h, :w]"
                if not stack else None),
            best_practice("Print the shapes of the tensors just before the call when the model is built: "
                          "the sizes follow from the strides and paddings of the layers before it.")]
    return Diagnosis(msg, recs, ["other"], 0.85, {"dim": dim, "expected_size": exp, "got_size": got})


def _permuted(tensors: list[dict]) -> tuple[dict, dict] | None:
    """Two tensors of the frame with the same sizes in a different order (a transpose left out)."""
    for i, t in enumerate(tensors):
        for u in tensors[:i]:
            if t["shape"] != u["shape"] and sorted(t["shape"]) == sorted(u["shape"]):
                return t, u
    return None


def _swaps_1_2(t: dict, like: dict) -> bool:
    s = list(t["shape"])
    if len(s) < 3:
        return False
    s[1], s[2] = s[2], s[1]
    return s == list(like["shape"])


def target_shape(ctx: Context, m: re.Match) -> Diagnosis:
    tgt, inp = ints(m.group(1)), ints(m.group(2))
    msg = f"{loss_name(ctx)} needs target and input of the same shape; target is {shape_str(tgt)}, input {shape_str(inp)}."
    recs = []
    if inp == tgt + [1]:
        recs.append(fix("Drop the trailing size-1 dimension of the output (or add it to the target).",
                         "loss = criterion(logits.squeeze(1), target.float())"))
    elif len(inp) == len(tgt) + 1:
        recs.append(fix(f"The input has {inp[-1]} columns: for {inp[-1]} classes with index targets use "
                         f"CrossEntropyLoss; for multi-label targets one-hot them to {shape_str(inp)}.",
                         "loss = nn.CrossEntropyLoss()(logits, target.long())"))
    recs.append(fix("Give the target the input's shape.", f"target = target.view({', '.join(map(str, inp))}).float()"))
    return Diagnosis(msg, recs, ["wrong_loss_function"], 0.9, {"input_shape": inp, "target_shape": tgt})


def batch_size(ctx: Context, m: re.Match) -> Diagnosis:
    a, b = int(m.group(1)), int(m.group(2))
    msg = (f"{loss_name(ctx)} got {a} predictions for {b} targets: the batch size changed between the input "
           f"and the output.")
    if b and a % b == 0 and a != b:
        msg += f" {a} = {b} x {a // b}: a reshape such as x.view(-1, N) before the classifier likely folded part of the features into the batch."
    return Diagnosis(msg, [fix("Flatten with the batch kept first: x.flatten(1) or x.view(x.size(0), -1), never x.view(-1, N).",
                                "x = x.view(x.size(0), -1)"),
                           fix(f"Then set the next Linear's in_features to the flattened size.")],
                     ["other"], 0.9, {"input_batch": a, "target_batch": b})
