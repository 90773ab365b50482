"""Builders for dtype and device errors: input vs parameter dtypes, loss targets, indices, devices."""

from __future__ import annotations

import re

from modeldebug.diagnose.context import Context, Diagnosis, loss_name, module_call, shape_str, var_name
from modeldebug.findings import best_practice, fix

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


def input_vs_param_dtype(ctx: Context, m: re.Match) -> Diagnosis:
    got, want = _dt(m.group(1)), _dt(m.group(2))
    inp = ctx.first_input()
    if inp and inp.get("dtype") and inp["dtype"] != got and inp["dtype"] == want:  # the order was the other way round
        got, want = want, got
    v = var_name(ctx)
    what = f"`{module_call(ctx)}`" if ctx.module_args else (f"a {ctx.module_type}" if ctx.module_type else "the layer")
    msg = (f"{ctx.name} is {what} with {want} parameters and received input of dtype {got}"
           + (f" (shape {shape_str(inp['shape'])})" if inp and inp.get("shape") else "") + ".")
    cast = _CAST.get(want, f".to({want})")
    recs = []
    if got == "torch.uint8":
        msg += " Raw uint8 pixels must be converted (and scaled) first."
        recs.append(fix("Convert the images to float and scale them to [0, 1].", f"{v} = {v}.float() / 255"))
    else:
        recs.append(fix(f"Call `{cast}` on the input.", f"{v} = {v}{cast}"))
    if got == "torch.float64":
        recs.append(best_practice("NumPy arrays are float64 by default: convert once in the dataset.",
                        "torch.from_numpy(array).float()  # or torch.tensor(array, dtype=torch.float32)"))
    if got in ("torch.float16", "torch.bfloat16") or want in ("torch.float16", "torch.bfloat16"):
        devices = {str(p.get("device") or "").split(":")[0] for p in ctx.parameters} - {""}
        device = devices.pop() if len(devices) == 1 else "cuda"  # the autocast of the model's own device
        recs.append(best_practice("For mixed precision use autocast instead of casting by hand.",
                        f"with torch.autocast(device_type='{device}', dtype=torch.bfloat16):\n    out = model(x)"))
    return Diagnosis(msg, recs, ["other"], 0.9, {"input_dtype": got, "parameter_dtype": want})


def target_needs_long(ctx: Context, m: re.Match) -> Diagnosis:
    got = _dt(m.group(1) or m.group(2))
    inp, tgt = ctx.tensor("input"), ctx.tensor("target")
    n_cls = inp["shape"][1] if inp and inp.get("shape") and len(inp["shape"]) >= 2 else None
    rng = f" in [0, {n_cls})" if n_cls else ""
    msg = f"{loss_name(ctx)} takes class-index targets of dtype torch.long{rng}, but the target is {got}"
    msg += f" (shape {shape_str(tgt['shape'])})." if tgt and tgt.get("shape") else "."
    recs = [fix(f"Targets must be class indices of dtype torch.long{rng}: convert them with `.long()`.",
                 "loss = criterion(logits, target.long())"),
            fix("If the targets are probabilities or one-hot rows, give them the input's shape (float) instead.")]
    return Diagnosis(msg, recs, ["wrong_loss_function", "label_problem"], 0.9, {"target_dtype": got, "expected": "torch.int64"})


def target_needs_float(ctx: Context, m: re.Match) -> Diagnosis:
    got, want = _dt(m.group(1)), _dt(m.group(2))
    if want not in ("torch.float32", "torch.float64", "torch.float16", "torch.bfloat16"):
        got, want = want, got
    msg = (f"{loss_name(ctx)} computes in floating point ({want}) but the target is {got}: "
           f"regression and binary losses need float targets.")
    cast = _CAST.get(want, ".float()")
    return Diagnosis(msg, [fix(f"Call `{cast}` on the target.", f"loss = criterion(output, target{cast})"),
                           fix("If the targets are class indices of several classes, use nn.CrossEntropyLoss instead.")],
                     ["wrong_loss_function"], 0.85, {"target_dtype": got, "expected": want})


def cast_target(ctx: Context, m: re.Match) -> Diagnosis:
    """"result type Float can't be cast to the desired output type Long": a Long target met a float loss."""
    return target_needs_float(ctx, re.match(r"(\w+) (\w+)", f"{m.group(2)} {m.group(1)}"))


def index_dtype(ctx: Context, m: re.Match) -> Diagnosis:
    got = _dt(m.group(1))
    v = var_name(ctx, "indices")
    msg = f"{ctx.name} ({ctx.module_type or 'embedding'}) takes integer indices (torch.long) but received {got}."
    return Diagnosis(msg, [fix("Call `.long()` on the indices.", f"{v} = {v}.long()")],
                     ["other"], 0.9, {"input_dtype": got, "expected": "torch.int64"})


def generic_dtype(ctx: Context, m: re.Match) -> Diagnosis:
    dts = ", ".join(f"`{t['name']}` {t['dtype']}" for t in (ctx.op_inputs or ctx.inputs) if t.get("dtype"))
    msg = f"Mixed dtypes in {ctx.name}: {m.group(0).strip()}" + (f" ({dts})." if dts else "")
    return Diagnosis(msg, [fix("Cast the operands to one dtype, usually the model's (torch.float32): "
                                "`.float()` on inputs, `.long()` on class indices.", "x = x.float()")],
                     ["other"], 0.75)


def devices(ctx: Context, m: re.Match) -> Diagnosis:
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
    recs = [fix("Move the input to the model's device.", "x = x.to(next(model.parameters()).device)"),
            fix("Move the model once, before creating the optimizer, and every batch in the loop.",
                 "device = 'cuda' if torch.cuda.is_available() else 'cpu'\nmodel.to(device)\n"
                 "for x, y in loader:\n    x, y = x.to(device), y.to(device)"),
            best_practice("Tensors created inside forward (masks, positions) should follow their input's device; keep "
                "constant tensors as buffers so model.to() moves them.",
                "mask = torch.ones(n, device=x.device)\nself.register_buffer('mask', mask)")]
    return Diagnosis(msg, recs, ["other"], 0.9, {"devices": devs})


def no_cuda(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"The code asks for a CUDA device but this PyTorch has none ({m.group(0).strip()})."
    return Diagnosis(msg, [fix("Pick the device at run time.",
                                "device = 'cuda' if torch.cuda.is_available() else 'cpu'\nmodel.to(device)"),
                           fix("Load GPU checkpoints with a map_location.",
                                "torch.load(path, map_location='cpu')")], ["other"], 0.9)
