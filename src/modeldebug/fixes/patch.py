"""A candidate fix as a unified diff of the user's script, at the lines the probe saw (``fixes/sites.py``).

One function per candidate kind (``PATCHERS``, keyed by the spec's ``"kind"``) returns the edits
of its change or says in a few words why none can be made (the line is in a library, the
expression cannot be rewritten safely); :func:`make` turns the edits into a diff that `git apply`
takes (paths relative to the directory the fix ran in) and checks that the result still parses.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from modeldebug.fixes.sites import STEPS_SEEN


class NoPatch(Exception):
    """Why no diff can be made for a candidate (its message, a few words)."""


@dataclass
class Edit:
    file: str
    start: tuple[int, int]  # (line, column in characters), 1-based lines
    end: tuple[int, int]
    text: str


class Source:
    """One file of the script: its text and syntax tree, and what the edits need from them."""

    def __init__(self, file: str):
        self.file = file
        self.text = Path(file).read_text()
        self.lines = self.text.splitlines(keepends=True)
        self.tree = ast.parse(self.text, file)
        self.parents = {id(c): n for n in ast.walk(self.tree) for c in ast.iter_child_nodes(n)}

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ""

    def col(self, line: int, byte_col: int) -> int:
        """A column of the AST (UTF-8 bytes) in characters."""
        return len(self.lines[line - 1].encode()[:byte_col].decode(errors="ignore"))

    def span(self, node: ast.AST) -> tuple[tuple[int, int], tuple[int, int]]:
        return ((node.lineno, self.col(node.lineno, node.col_offset)),
                (node.end_lineno, self.col(node.end_lineno, node.end_col_offset)))

    def indent(self, line: int) -> str:
        text = self.lines[line - 1]
        return text[:len(text) - len(text.lstrip())]

    def statement(self, line: int) -> ast.stmt:
        """The simple statement running at ``line``, alone on its lines (so a line can go before or after it)."""
        found = [n for n in ast.walk(self.tree) if isinstance(n, ast.stmt) and not hasattr(n, "body")
                 and n.lineno <= line <= n.end_lineno]
        if not found:
            raise NoPatch(f"no statement found at {Path(self.file).name}:{line}")
        stmt = found[-1]
        if not self.alone(stmt):
            raise NoPatch(f"{Path(self.file).name}:{stmt.lineno} holds more than one statement")
        return stmt

    def alone(self, stmt: ast.stmt) -> bool:
        parent = self.parents.get(id(stmt))
        siblings = [s for field in ("body", "orelse", "finalbody") for s in getattr(parent, field, []) or []]
        shares = any(s is not stmt and (stmt.lineno <= s.lineno <= stmt.end_lineno
                                        or s.lineno <= stmt.lineno <= s.end_lineno) for s in siblings)
        return not shares and self.col(stmt.lineno, stmt.col_offset) == len(self.indent(stmt.lineno))

    def before(self, stmt: ast.stmt, *code: str) -> Edit:
        return Edit(self.file, (stmt.lineno, 0), (stmt.lineno, 0), self._lines(stmt, code))

    def after(self, stmt: ast.stmt, *code: str) -> Edit:
        at = (stmt.end_lineno + 1, 0)
        return Edit(self.file, at, at, self._lines(stmt, code))

    def _lines(self, stmt: ast.stmt, code: tuple[str, ...]) -> str:
        """New lines at the statement's indentation."""
        return "".join(f"{self.indent(stmt.lineno)}{line}\n" for line in code)

    def calls_at(self, line: int, names: tuple[str, ...]) -> list[ast.Call]:
        """Calls spanning ``line`` whose function's last name is one of ``names``, innermost first."""
        calls = [n for n in ast.walk(self.tree) if isinstance(n, ast.Call) and n.lineno <= line <= n.end_lineno
                 and _last_name(n.func) in names]
        return sorted(calls, key=lambda c: (c.end_lineno - c.lineno, c.end_col_offset - c.col_offset))

    def torch_name(self, member: str) -> str:
        """How the script spells ``torch.<member>`` with its module-level imports."""
        for node in self.tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "torch":
                        return f"{alias.asname or 'torch'}.{member}"
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and member.split(".")[0] in {
                    a.name for a in node.names if a.asname is None}:
                return member
        raise NoPatch(f"{Path(self.file).name} does not import torch by name")


def _last_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _number(value: float) -> str:
    text = f"{value:.6g}"
    return text if any(c in text for c in ".en") else text + ".0"


# ---------------------------------------------------------------- the probe's sites


@dataclass
class Sites:
    data: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sites | None:
        try:
            return cls(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            return None

    def sources(self) -> dict[str, Source]:
        if not hasattr(self, "_sources"):
            self._sources: dict[str, Source] = {}
        return self._sources

    def source(self, file: str) -> Source:
        cached = self.sources()
        if file not in cached:
            try:
                cached[file] = Source(file)
            except (OSError, SyntaxError, ValueError) as exc:
                raise NoPatch(f"{Path(file).name} cannot be read ({type(exc).__name__})") from None
        return cached[file]

    def optimizers(self) -> list[dict[str, Any]]:
        """The optimizers built in the user's code, once per line; NoPatch naming the library otherwise."""
        seen, mine = set(), []
        for o in self.data.get("optimizers") or []:
            if o.get("module", "").startswith("accelerate"):  # a wrapper of an optimizer built elsewhere
                continue
            if (o["file"], o["line"]) not in seen:
                seen.add((o["file"], o["line"]))
                mine.append(o)
        if not mine:
            raise NoPatch("the run saw no optimizer being built")
        outside = [o for o in mine if not o["user"]]
        if outside:
            raise NoPatch(f"the optimizer is built inside a library ({_library(outside[0]['file'])})")
        return mine

    def loop(self) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
        """The training loop's backward() site, its optimizer.step() site (None when not in the user's
        code), and whether several backward calls run per step."""
        backward = self.data.get("backward") or []
        mine = [b for b in backward if b["user"]]
        if not mine:
            raise NoPatch(f"backward() is called inside a library ({_library(backward[0]['file'])})" if backward
                          else "the run saw no backward() call")
        main = max(mine, key=lambda b: b["calls"])
        steps = [s for s in self.data.get("step") or [] if s["user"] and s["file"] == main["file"]]
        step = max(steps, key=lambda s: s["calls"]) if steps else None
        seen = max(1, min(self.data.get("steps") or 0, STEPS_SEEN))
        return main, step, main["calls"] > seen

    def optimizer_expr(self, step: dict[str, Any] | None) -> str:
        """The optimizer as the loop names it: ``opt`` in ``opt.step()`` (``scaler.step(opt)``: its
        argument), else the name the optimizer was assigned to where it was built."""
        if step is not None:
            src = self.source(step["file"])
            for call in src.calls_at(step["line"], ("step",)):
                if isinstance(call.func, ast.Attribute):
                    return src.segment(call.args[0] if call.args else call.func.value)
        names = {self._assigned(o) for o in self.optimizers()}
        if len(names) == 1 and None not in names:
            return names.pop()
        raise NoPatch("it is not clear which variable holds the optimizer")

    def _assigned(self, optimizer: dict[str, Any]) -> str | None:
        src = self.source(optimizer["file"])
        stmt = src.statement(optimizer["line"])
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            return stmt.targets[0].id
        return None

    def files(self) -> list[str]:
        found = [o["file"] for o in self.data.get("optimizers") or [] if o["user"]]
        found += [b["file"] for b in self.data.get("backward") or [] if b["user"]]
        script = self.data.get("script")
        return list(dict.fromkeys(found + ([script] if script and os.path.isfile(script) else [])))


def _library(file: str) -> str:
    parts = Path(file).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1]
    return Path(file).name


# ---------------------------------------------------------------- one patcher per candidate kind


def _lr_scale(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    factor = float(spec["factor"])
    edits: list[Edit] = []
    for optimizer in sites.optimizers():
        src = sites.source(optimizer["file"])
        calls = src.calls_at(optimizer["line"], (optimizer["class"],))
        if not calls:
            raise NoPatch(f"the call building {optimizer['class']} is not at {Path(src.file).name}:{optimizer['line']}")
        call = calls[0]
        edits += _scale_lr_argument(src, call, factor, optimizer.get("default_lr"))
        edits += _scale_groups(src, call, factor)
        edits += _scale_schedulers(sites, optimizer, factor)
    return edits


def _scale_lr_argument(src: Source, call: ast.Call, factor: float, default: float | None) -> list[Edit]:
    given = next((k.value for k in call.keywords if k.arg == "lr"), None)
    if given is None and len(call.args) >= 2 and not isinstance(call.args[1], ast.Starred):
        given = call.args[1]
    if given is not None:
        return [_scaled(src, given, factor)]
    if any(k.arg is None for k in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args):
        raise NoPatch("the learning rate is passed through *args/**kwargs")
    if not isinstance(default, (int, float)):
        raise NoPatch("the optimizer's default learning rate is not known")
    last = max([*call.args, *(k.value for k in call.keywords)], key=lambda n: (n.end_lineno, n.end_col_offset))
    at = src.span(last)[1]  # right after the last argument (before a trailing comma)
    return [Edit(src.file, at, at, f", lr={_number(default * factor)}")]


def _scale_groups(src: Source, call: ast.Call, factor: float) -> list[Edit]:
    """Per-group rates in a literal list of groups (``[{"params": ..., "lr": 1e-3}, ...]``)."""
    groups = call.args[0] if call.args else None
    if not isinstance(groups, (ast.List, ast.Tuple)):
        return []
    return [_scaled(src, value, factor) for d in groups.elts if isinstance(d, ast.Dict)
            for key, value in zip(d.keys, d.values) if isinstance(key, ast.Constant) and key.value == "lr"]


# schedulers that set the rate themselves (the optimizer's lr is overwritten): their arguments scale
SCHEDULER_RATES = {"OneCycleLR": (("max_lr", 1),), "CyclicLR": (("base_lr", 1), ("max_lr", 2))}


def _scale_schedulers(sites: Sites, optimizer: dict[str, Any], factor: float) -> list[Edit]:
    edits = []
    for scheduler in sites.data.get("schedulers") or []:
        rates = SCHEDULER_RATES.get(scheduler["class"])
        if not rates or scheduler.get("optimizer") != optimizer.get("id"):
            continue
        if not scheduler["user"]:
            raise NoPatch(f"the {scheduler['class']} that sets the rate is built inside a library")
        src = sites.source(scheduler["file"])
        calls = src.calls_at(scheduler["line"], (scheduler["class"],))
        if not calls:
            raise NoPatch(f"the call building {scheduler['class']} is not at its line")
        for name, position in rates:
            given = next((k.value for k in calls[0].keywords if k.arg == name), None)
            if given is None and len(calls[0].args) > position:
                given = calls[0].args[position]
            if given is None:
                raise NoPatch(f"the {scheduler['class']}'s {name} is not given in its call")
            edits.append(_scaled(src, given, factor))
    return edits


def _scaled(src: Source, node: ast.expr, factor: float) -> Edit:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        text = _number(node.value * factor)
    elif isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call)):
        text = f"{src.segment(node)} * {factor:g}"
    else:
        text = f"({src.segment(node)}) * {factor:g}"
    start, end = src.span(node)
    return Edit(src.file, start, end, text)


def _zero_grad(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    backward, step, several = sites.loop()
    optimizer = sites.optimizer_expr(step)
    if several:  # backward runs several times a step (accumulation): zero once, after the step
        if step is None:
            raise NoPatch("backward() runs several times a step and the step's line is not in the script")
        src = sites.source(step["file"])
        return [src.after(src.statement(step["line"]), f"{optimizer}.zero_grad()")]
    src = sites.source(backward["file"])
    return [src.before(src.statement(backward["line"]), f"{optimizer}.zero_grad()")]


def _clip_grad_norm(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    backward, step, several = sites.loop()
    src = sites.source(backward["file"])
    optimizer = sites.optimizer_expr(step)
    clip = f"{src.torch_name('nn.utils.clip_grad_norm_')}({_params_expr(sites, optimizer)}, {_number(float(spec.get('max_norm', 1.0)))})"
    lines = [clip]
    scaler = _scaler(src, backward["line"])
    if scaler is not None:
        if "unscale_(" in src.text:
            raise NoPatch("the script unscales its gradients itself: clip after its unscale_()")
        lines.insert(0, f"{scaler}.unscale_({optimizer})")
    if several or scaler is not None:  # once a step, just before it
        if step is None:
            raise NoPatch("the optimizer's step is not called in the script")
        return [src.before(src.statement(step["line"]), *lines)]
    return [src.after(src.statement(backward["line"]), *lines)]


def _scaler(src: Source, line: int) -> str | None:
    """``scaler`` in ``scaler.scale(loss).backward()``: a GradScaler's gradients are scaled."""
    for call in src.calls_at(line, ("scale",)):
        if isinstance(call.func, ast.Attribute):
            return src.segment(call.func.value)
    return None


def _params_expr(sites: Sites, optimizer: str) -> str:
    """``model.parameters()`` when the one optimizer was built from it, else its groups' parameters."""
    try:
        built = sites.optimizers()
    except NoPatch:  # built in a library: its groups still hold the parameters
        built = []
    if len(built) == 1:
        src = sites.source(built[0]["file"])
        calls = src.calls_at(built[0]["line"], (built[0]["class"],))
        first = calls[0].args[0] if calls and calls[0].args else None
        if isinstance(first, ast.Call) and _last_name(first.func) == "parameters" and not first.args:
            return src.segment(first)
    return f'[p for group in {optimizer}.param_groups for p in group["params"]]'


def _train_params(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """Delete the lines that froze the named parameters; after a line that replaced their module once
    the optimizer was built, add its parameters to the optimizer."""
    names = [n for n in spec.get("params") or [] if isinstance(n, str)]
    edits: list[Edit] = []
    for file in sites.files():
        src = sites.source(file)
        for stmt in ast.walk(src.tree):
            if isinstance(stmt, ast.stmt) and _freezes(stmt, names) and src.alone(stmt):
                edits.append(_delete(src, stmt))
        edits += _rejoin(sites, src, names)
    if not edits:
        raise NoPatch("no line of the script freezes these parameters or replaces their module")
    return edits


def _path(node: ast.AST) -> str | None:
    """``model.encoder.layers[0]`` -> ``encoder.layers.0`` (the attribute path below the root name)."""
    parts = []
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
        elif isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int):
            parts.append(str(node.slice.value))
        else:
            return None
        node = node.value
    return ".".join(reversed(parts)) if isinstance(node, ast.Name) and parts else None


def _names_under(path: str | None, names: list[str]) -> bool:
    return bool(path) and any(n == path or n.startswith(path + ".") for n in names)


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _freezes(stmt: ast.stmt, names: list[str]) -> bool:
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "requires_grad_":
        return _is_false(call.args[0] if call.args else None) and _names_under(_path(call.func.value), names)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute) \
            and stmt.targets[0].attr == "requires_grad" and _is_false(stmt.value):
        return _names_under(_path(stmt.targets[0].value), names)
    if isinstance(stmt, ast.For) and isinstance(stmt.iter, ast.Call) and isinstance(stmt.iter.func, ast.Attribute) \
            and stmt.iter.func.attr == "parameters" and len(stmt.body) == 1 and not stmt.orelse:
        inner = stmt.body[0]
        return _names_under(_path(stmt.iter.func.value), names) and _freezes_loop_variable(inner, stmt.target)
    return False


def _freezes_loop_variable(stmt: ast.stmt, target: ast.expr) -> bool:
    if not isinstance(target, ast.Name):
        return False
    own = lambda node: isinstance(node, ast.Name) and node.id == target.id  # noqa: E731
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "requires_grad_":
        return own(call.func.value) and _is_false(call.args[0] if call.args else None)
    return isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute) \
        and stmt.targets[0].attr == "requires_grad" and own(stmt.targets[0].value) and _is_false(stmt.value)


def _delete(src: Source, stmt: ast.stmt) -> Edit:
    parent = src.parents.get(id(stmt))
    alone_in_block = any(getattr(parent, f, None) == [stmt] for f in ("body", "orelse", "finalbody"))
    text = f"{src.indent(stmt.lineno)}pass\n" if alone_in_block else ""
    return Edit(src.file, (stmt.lineno, 0), (stmt.end_lineno + 1, 0), text)


def _rejoin(sites: Sites, src: Source, names: list[str]) -> list[Edit]:
    """``model.head = nn.Linear(...)`` after the optimizer was built: its parameters join the optimizer."""
    built = [o for o in sites.data.get("optimizers") or [] if o["user"] and o["file"] == src.file]
    if not built:
        return []
    first = min(o["line"] for o in built)
    edits = []
    for stmt in ast.walk(src.tree):
        if isinstance(stmt, ast.Assign) and stmt.lineno > first and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Attribute) and _names_under(_path(stmt.targets[0]), names) \
                and src.alone(stmt):
            optimizer = sites.optimizer_expr(None)
            edits.append(src.after(stmt, f'{optimizer}.add_param_group({{"params": {src.segment(stmt.targets[0])}'
                                         f'.parameters()}})'))
    return edits


PATCHERS: dict[str, Callable[[dict[str, Any], Sites], list[Edit]]] = {
    "lr_scale": _lr_scale,
    "zero_grad": _zero_grad,
    "clip_grad_norm": _clip_grad_norm,
    "train_params": _train_params,
}


# ---------------------------------------------------------------- edits -> diff


def make(spec: dict[str, Any], sites: Sites | None, root: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """The unified diff of ``spec``'s change (paths relative to ``root``, default the current
    directory) and "" , or None and why no diff can be made."""
    patcher = PATCHERS.get(str(spec.get("kind")))
    if patcher is None:
        return None, "no diff for this kind of change"
    if sites is None:
        return None, "the probe recorded no lines of the script"
    try:
        edits = patcher(spec, sites)
        return _diff(sites, edits, Path(root or os.getcwd())), ""
    except NoPatch as exc:
        return None, str(exc)
    except Exception as exc:  # a diff not made never fails the fix session
        return None, f"the diff could not be made ({type(exc).__name__})"


def _diff(sites: Sites, edits: list[Edit], root: Path) -> str:
    out = []
    for file in dict.fromkeys(e.file for e in edits):
        src = sites.source(file)
        text = _apply(src, [e for e in edits if e.file == file])
        try:
            compile(text, file, "exec", dont_inherit=True)
        except SyntaxError:
            raise NoPatch("the changed script would not parse") from None
        rel = os.path.relpath(file, root).replace(os.sep, "/")
        out += difflib.unified_diff(src.lines, text.splitlines(keepends=True), f"a/{rel}", f"b/{rel}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out)


def _apply(src: Source, edits: list[Edit]) -> str:
    starts = [0]
    for line in src.lines:
        starts.append(starts[-1] + len(line))

    def offset(at: tuple[int, int]) -> int:
        return starts[min(at[0] - 1, len(src.lines))] + at[1]

    text = src.text if src.text.endswith("\n") or not src.text else src.text + "\n"
    for edit in sorted(edits, key=lambda e: (offset(e.start), offset(e.end)), reverse=True):
        text = text[:offset(edit.start)] + edit.text + text[offset(edit.end):]
    return text
