"""A failure -> its ``Context``: from a live exception (the traceback's frames: the module, its
forward arguments and parameters; in backward, the autograd graph) or from a traceback saved as text."""

from __future__ import annotations

import linecache
import math
import re
from typing import Any, Iterable, Mapping

from modeldebug.diagnose.context import LOSS_FUNCS, SAVED_VERSION, Context, ints
from modeldebug.diagnose.roots import names_from_frames

_MODULE_ARGS = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
                "groups", "input_size", "hidden_size", "num_layers", "batch_first", "bidirectional",
                "num_embeddings", "embedding_dim", "num_features", "normalized_shape", "embed_dim", "num_heads")

_MAX_TENSORS = 8

# Terminal escapes (colours, titles, cursor moves) and control characters: exception text is printed,
# and what it carries must not drive the user's terminal.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """``text`` without ANSI escape sequences and control characters (tabs and newlines kept; a
    carriage return ends a line)."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


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


def is_torch_file(path: str) -> bool:
    p = path.replace("\\", "/")
    return "/torch/" in p and ("site-packages" in p or "dist-packages" in p or "/lib/python" in p or "/torch/nn/" in p)


_OWN_DIR = __file__.replace("\\", "/").rsplit("/diagnose/", 1)[0] + "/"
_OWN_WRAPPERS = re.compile(r"/modeldebug/collect/(?:patches|hooks|auto|autopatch)\.py$")


def is_own_file(path: str) -> bool:
    """modeldebug's own code (its call wrappers): never where the user's code failed."""
    p = path.replace("\\", "/")
    return p.startswith(_OWN_DIR) or bool(_OWN_WRAPPERS.search(p))


def _outside(path: str) -> bool:
    return not is_torch_file(path) and not is_own_file(path)


def _module_args(module: Any) -> dict[str, Any]:
    out = {}
    for k in _MODULE_ARGS:
        v = getattr(module, k, None)
        if isinstance(v, (int, bool)) or (isinstance(v, tuple) and all(isinstance(x, int) for x in v)):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


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


def _changed_leaves(loss, shape: list[int], node: str | None, version: int, names: Mapping[int, str]) -> list[str]:
    """The parameters of ``loss``'s graph that a failing backward found changed in place: a leaf of
    ``shape`` now at ``version``, or (``node``: a view node's name) a leaf at ``version`` with as
    many elements right below a view node (a view shares its leaf's version). Qualified names where known."""
    from collections import deque

    from modeldebug.diagnose.context import VIEW_NODES

    if loss is None or getattr(loss, "grad_fn", None) is None:
        return []
    op = node[:-len("Backward0")] if node and node.endswith("Backward0") else node
    if op is not None and op not in VIEW_NODES:
        return []  # the output of a computation, not a parameter's view: an in-place op in the forward
    numel = math.prod(shape)
    found: list[str] = []
    queue, seen = deque([loss.grad_fn]), set()
    while queue and len(seen) < 20000:
        n = queue.popleft()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        below = [m for m, _ in (n.next_functions or ())]
        if op is None or n.name().removesuffix("Backward0") in VIEW_NODES:  # (torch may name weight.T's
            # view AsStrided in the message and TBackward0 in the graph)
            for leaf in below if op is not None else [n]:
                var = getattr(leaf, "variable", None)
                fits = var is not None and var._version == version and (
                    list(var.shape) == shape if op is None else var.numel() == numel)
                if fits:
                    name = names.get(id(var)) or f"a parameter of shape {list(var.shape)}"
                    if name not in found:
                        found.append(name)
        queue.extend(below)
    return found


def context_from_exception(exc: BaseException, module_names: Any = None, facts: Mapping[str, Any] | None = None) -> Context:
    """What the traceback's frames say about where ``exc`` was raised (no hooks, no reruns);
    ``facts``: what the run watching it knows (``diagnose.autograd.run_facts``)."""
    from torch import nn

    import torch

    names = _names_map(module_names)
    ctx = Context(error_type=type(exc).__name__, message=clean_text(str(exc)), run=dict(facts or {}))
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
        if ctx.where is None and _outside(code.co_filename):
            ctx.where = f"{code.co_filename}:{lineno}"
            ctx.source = linecache.getline(code.co_filename, lineno).strip() or None
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
        elif module is None and op_frame is None and is_torch_file(code.co_filename) and code.co_name not in (
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
            if is_torch_file(frame.f_code.co_filename) and not isinstance(frame.f_locals.get("self"), nn.Module) \
                    and frame.f_code.co_name not in ("_engine_run_backward", "backward", "_call_impl", "_wrapped_call_impl"):
                op_frame = frame
                break
            if isinstance(frame.f_locals.get("self"), nn.Module):
                break
    if (module is not None and id(module) not in names) or (ctx.in_backward and module is None and not names):
        # Before any model is watched (a crash in the first forward), or called without names:
        # the models the traceback's frames reach name it.
        try:
            names = {**names_from_frames([f for f, _ in frames]), **names}
        except Exception:  # naming is a nicety: the class still names the module
            pass
    if loss is not None:
        ctx.loss = {"requires_grad": bool(loss.requires_grad), "grad_fn": loss.grad_fn is not None,
                    "inference": bool(loss.is_inference()), "shape": list(loss.shape)}
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
    saved = re.search(SAVED_VERSION, ctx.message) if ctx.in_backward else None
    if saved:
        try:
            ctx.changed_parameters = _changed_leaves(loss, ints(saved.group(1)), saved.group(2), int(saved.group(3)), names)
        except Exception:  # the graph may be half freed: the message still stands
            ctx.changed_parameters = []
    if ctx.in_backward and module is None:
        node = re.search(r"output \d+ of (\w+)|Function '(\w+)'", ctx.message)
        if node:
            try:
                ctx.near_module, ctx.upstream_ops = _locate_node(loss, node.group(1) or node.group(2), names)
            except Exception:  # the graph may be half freed: the message still stands
                ctx.near_module = None
    if ctx.changed_parameters and "." in ctx.changed_parameters[0]:
        ctx.near_module = ctx.changed_parameters[0].rsplit(".", 1)[0]  # the layer whose weights changed
    return ctx


_EXC_LINE = re.compile(r"^((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning))(?::[ \t]?(.*))?$")

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)[ \t]*(?:\n|$)'
                    r'(?P<src>[ \t]+\S.*)?(?:\n(?P<carets>[ \t]*[~^]+[~^ \t]*)$)?', re.M)

_TORCH_MODULE_FILES = {"linear.py": "Linear", "sparse.py": "Embedding", "batchnorm.py": "BatchNorm",
                       "normalization.py": "LayerNorm", "activation.py": "activation", "container.py": None,
                       "transformer.py": "Transformer", "pooling.py": "Pooling", "dropout.py": "Dropout"}


_CAUSE_MARKER = "The above exception was the direct cause of the following exception:"


def contexts_from_text(text: str) -> list[Context]:
    """A saved traceback's exceptions linked by ``raise ... from``, innermost cause first (Python
    prints the cause first); an exception raised while handling another is its own, last, link."""
    parts = clean_text(text).split(_CAUSE_MARKER)
    contexts = [context_from_text(part) for part in parts if part.strip()]
    return contexts or [context_from_text(text)]


def not_a_traceback(text: str) -> str | None:
    """Why ``text`` cannot be explained (binary data; no traceback, exception line or known error
    message in it), or None when it can."""
    if not text.strip():
        return "is empty"
    odd = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\x1b"))
    if "\x00" in text or odd > max(2, len(text) // 20):
        return "is binary data, not text"
    cleaned = clean_text(text)
    if "Traceback (most recent call last)" in cleaned or any(_EXC_LINE.match(line) for line in cleaned.splitlines()):
        return None
    from modeldebug.diagnose.patterns import matches

    if matches(context_from_text(cleaned)):
        return None  # a bare error message modeldebug knows ("Expected all tensors to be on the same device")
    return "holds no Python traceback, exception line or error message modeldebug knows"


def context_from_text(text: str) -> Context:
    """What a saved traceback says: the last exception line and the frames before it."""
    text = clean_text(text)
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
        if is_own_file(file):
            continue
        if is_torch_file(file):
            if "/nn/modules/" in file.replace("\\", "/") and ctx.module_type is None:
                ctx.module_type = _type_from_torch_frame(base, func, src)
            elif "/nn/functional.py" in file.replace("\\", "/") and ctx.function is None and ctx.module_type is None:
                ctx.function = func
            continue
        if ctx.where is None:
            ctx.where, ctx.source = f"{file}:{line}", src or None
        if called and (ctx.module_type or ctx.function or func == "forward"):
            ctx.module_hint = called
            break
    if ctx.module_type is None and ctx.function in LOSS_FUNCS:
        ctx.module_type = LOSS_FUNCS[ctx.function]
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
            return None  # the carets mark an operation of this line (`a @ b`), not a module's call
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
        return LOSS_FUNCS.get(m.group(1), "Loss") if m else "Loss"
    return _TORCH_MODULE_FILES.get(base)
