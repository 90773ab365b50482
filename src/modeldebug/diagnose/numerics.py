"""Builders for bad values: NaN from anomaly detection, clipping, sampling and distributions; indices and
class targets out of range; CUDA device-side asserts."""

from __future__ import annotations

import re

from modeldebug.diagnose.context import Context, Diagnosis, first_line, loss_name, module_call
from modeldebug.findings import best_practice, fix

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


def anomaly_nan(ctx: Context, m: re.Match) -> Diagnosis:
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
    recs = [fix(f"Guard the {op} with an epsilon or clamp.", code)] if code else \
        [fix(f"Find the input that makes {op} unstable and guard it with an epsilon or clamp.")]
    recs.append(best_practice("Turn detect_anomaly off once found: it slows training several times."))
    return Diagnosis(msg, recs, ["numerically_unstable_op"], 0.9, {"node": node})


def nonfinite_norm(ctx: Context, m: re.Match) -> Diagnosis:
    msg = "The gradient norm is NaN or infinite at clipping: some gradients are non-finite."
    return Diagnosis(msg, [
        fix("Lower the learning rate or add warm-up; with fp16, use a GradScaler (it skips such steps).",
             "scaler = torch.amp.GradScaler()\nscaler.scale(loss).backward()\nscaler.unscale_(optimizer)"),
        fix("Find where the first NaN appears: check the loss and the inputs for NaN before backward.",
             "assert torch.isfinite(loss), 'loss is not finite'"),
    ], ["learning_rate_too_high", "numerically_unstable_op"], 0.8)


def nan_probs(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"Sampling in {ctx.name} got probabilities with NaN, inf or negative values."
    return Diagnosis(msg, [fix("Sample from logits (softmax is stable) and check the logits for NaN first.",
                                "probs = torch.softmax(logits.float(), dim=-1)\nidx = torch.multinomial(probs, 1)")],
                     ["numerically_unstable_op"], 0.8)


def nan_constraint(ctx: Context, m: re.Match) -> Diagnosis:
    param, dist = m.group(1), m.group(2)
    msg = (f"{dist} got NaN in its parameter `{param}` in {ctx.name}: the network's output that feeds it "
           "is already non-finite.")
    return Diagnosis(msg, [
        fix("Find the layer that first outputs NaN (lower the learning rate, clip gradients) and keep scales positive.",
             "scale = torch.nn.functional.softplus(raw_scale) + 1e-5"),
        fix("Clip the gradient norm.", "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"),
    ], ["numerically_unstable_op", "learning_rate_too_high"], 0.8)


def nan_generic(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"Training stopped on a non-finite value in {ctx.name}: {first_line(m.string)}"
    return Diagnosis(msg, [fix("Find the first NaN: lower the learning rate, clip gradients, guard log/div/sqrt with an epsilon.",
                                "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)")],
                     ["numerically_unstable_op"], 0.6)


def embedding_index(ctx: Context, m: re.Match) -> Diagnosis:
    n = ctx.module_args.get("num_embeddings")
    inp = ctx.first_input()
    mx = inp.get("max") if inp else None
    mn = inp.get("min") if inp else None
    if n is not None:
        msg = f"{ctx.name} is `{module_call(ctx)}`: indices must be in [0, {n})"
        msg += f"; found max {mx}" if mx is not None else ""
        msg += f" and min {mn}" if mn is not None and mn < 0 else ""
        msg += "."
        recs = [fix(f"Indices must be in [0, {n}); found max {mx}: make the table large enough "
                     f"(vocabulary size + special tokens) or fix the tokenizer.",
                     f"nn.Embedding({max(n, (mx or n - 1) + 1)}, {ctx.module_args.get('embedding_dim')})")]
    else:
        msg = f"An index is out of range in {ctx.name} (embedding or indexing): {first_line(m.string).rstrip('.')}."
        recs = [fix("Check that every index is in [0, num_embeddings): compare the vocabulary size with the "
                     "largest token id.", "assert ids.max() < model.embedding.num_embeddings")]
    return Diagnosis(msg, recs, ["label_problem"] if ctx.module_type != "Embedding" else ["other"], 0.9,
                     {"detail": "index_out_of_range", "index_max": mx, "index_min": mn, "num_embeddings": n})


def target_bounds(ctx: Context, m: re.Match) -> Diagnosis:
    bad = int(m.group(1))
    inp, tgt = ctx.tensor("input"), ctx.tensor("target")
    n_cls = inp["shape"][1] if inp and inp.get("shape") and len(inp["shape"]) >= 2 else None
    mx = tgt.get("max") if tgt else None
    mn = tgt.get("min") if tgt else None
    found = f"found max {mx}" if mx is not None else f"found {bad}"
    if mn is not None and mn < 0:
        found += f", min {mn}"
    rng = f"[0, {n_cls})" if n_cls else "[0, num_classes)"
    msg = f"{loss_name(ctx)}: targets must be class indices of dtype torch.long in {rng}; {found}."
    recs = [fix(f"Targets must be class indices of dtype torch.long in {rng}; {found}."
                 + (" Labels look 1-based: subtract 1." if n_cls and mx == n_cls else ""),
                 "target = target - 1" if n_cls and mx == n_cls else None)]
    if n_cls and (mx or bad) >= n_cls:
        recs.append(fix(f"Or the output layer has too few classes: it outputs {n_cls}, the labels need {(mx or bad) + 1}.",
                         f"nn.Linear(in_features, {(mx or bad) + 1})"))
    if bad < 0 or (mn is not None and mn < 0):
        recs.append(fix("Negative labels: map them to [0, C), or pass ignore_index for padding labels.",
                         "nn.CrossEntropyLoss(ignore_index=-100)"))
    return Diagnosis(msg, recs, ["label_problem"], 0.9,
                     {"detail": "index_out_of_range", "num_classes": n_cls, "target_max": mx, "target_min": mn})


def device_assert(ctx: Context, m: re.Match) -> Diagnosis:
    text = ctx.full_text or m.string
    if re.search(r"t >= 0 && t < n_classes|cur_target >= 0 && cur_target < n_classes", text):
        msg = ("A CUDA kernel assertion failed in a loss: a target class index is outside [0, num_classes). "
               "CUDA reports it asynchronously, so the traceback may point at a later line.")
        recs = [fix("Targets must be class indices of dtype torch.long in [0, num_classes): check target.min() and target.max().",
                     "assert 0 <= y.min() and y.max() < logits.shape[1]")]
        causes = ["label_problem"]
    elif re.search(r"srcIndex < srcSelectDimSize|index out of bounds|indexSelect", text):
        msg = ("A CUDA kernel assertion failed in an index lookup (nn.Embedding or indexing): an index is outside the "
               "table. CUDA reports it asynchronously, so the traceback may point at a later line.")
        recs = [fix("Check that every index is in [0, num_embeddings).", "assert ids.max() < model.embedding.num_embeddings")]
        causes = ["other"]
    else:
        msg = "A CUDA kernel assertion failed (device-side assert); the traceback may point at a later line."
        recs = []
        causes = ["other"]
    recs.append(best_practice("Rerun with synchronous kernel launches (or on CPU) for the exact line and a readable error.",
                    "CUDA_LAUNCH_BLOCKING=1 python train.py"))
    return Diagnosis(msg, recs, causes, 0.8, {"detail": "device_side_assert"})
