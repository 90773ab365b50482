"""The script's source as `modeldebug fix`'s diffs edit it, and the probe's sites (``fixes/sites.py``):
where the run built its optimizers and called backward() and step(), read back with the syntax tree."""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def replace(self, stmt: ast.stmt, *code: str) -> Edit:
        """The statement's lines replaced with ``code`` (none: removed)."""
        return Edit(self.file, (stmt.lineno, 0), (stmt.end_lineno + 1, 0), self._lines(stmt, code))

    def _lines(self, stmt: ast.stmt, code: tuple[str, ...]) -> str:
        """New lines at the statement's indentation."""
        return "".join(f"{self.indent(stmt.lineno)}{line}\n" for line in code)

    def keyword(self, call: ast.Call, name: str, value: str) -> Edit:
        """``name=value`` added to ``call``, right after its last argument (before a trailing comma)."""
        given = [*call.args, *(k.value for k in call.keywords)]
        if not given:
            end = self.span(call)[1]
            return Edit(self.file, (end[0], end[1] - 1), (end[0], end[1] - 1), f"{name}={value}")
        at = self.span(max(given, key=lambda n: (n.end_lineno, n.end_col_offset)))[1]
        return Edit(self.file, at, at, f", {name}={value}")

    def calls_at(self, line: int, names: tuple[str, ...]) -> list[ast.Call]:
        """Calls spanning ``line`` whose function's last name is one of ``names``, innermost first."""
        calls = [n for n in ast.walk(self.tree) if isinstance(n, ast.Call) and n.lineno <= line <= n.end_lineno
                 and last_name(n.func) in names]
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


def last_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def number(value: float) -> str:
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
            raise NoPatch(f"the optimizer is built inside a library ({library(outside[0]['file'])})")
        return mine

    def constructor(self, optimizer: dict[str, Any]) -> ast.Call:
        """The call that built ``optimizer`` (``torch.optim.Adam(...)``) at its line."""
        calls = self.source(optimizer["file"]).calls_at(optimizer["line"], (optimizer["class"],))
        if not calls:
            raise NoPatch(f"the call building {optimizer['class']} is not at {Path(optimizer['file']).name}:"
                          f"{optimizer['line']}")
        return calls[0]

    def model_expr(self) -> str:
        """``model`` in ``Adam(model.parameters())``: the one optimizer's model."""
        built = self.optimizers()
        first = self.constructor(built[0]).args[0] if len(built) == 1 and self.constructor(built[0]).args else None
        if isinstance(first, ast.Call) and last_name(first.func) == "parameters" and not first.args \
                and isinstance(first.func, ast.Attribute):
            return self.source(built[0]["file"]).segment(first.func.value)
        raise NoPatch("it is not clear which variable holds the model")

    def loop(self) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
        """The training loop's backward() site, its optimizer.step() site (None when not in the user's
        code), and whether several backward calls run per step."""
        backward = self.data.get("backward") or []
        mine = [b for b in backward if b["user"]]
        if not mine:
            raise NoPatch(f"backward() is called inside a library ({library(backward[0]['file'])})" if backward
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


def library(file: str) -> str:
    parts = Path(file).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1]
    return Path(file).name


def apply_edits(src: Source, edits: list[Edit]) -> str:
    """``src``'s text with ``edits`` made (from the last, so earlier offsets hold)."""
    starts = [0]
    for line in src.lines:
        starts.append(starts[-1] + len(line))

    def offset(at: tuple[int, int]) -> int:
        return starts[min(at[0] - 1, len(src.lines))] + at[1]

    text = src.text if src.text.endswith("\n") or not src.text else src.text + "\n"
    for edit in sorted(edits, key=lambda e: (offset(e.start), offset(e.end)), reverse=True):
        text = text[:offset(edit.start)] + edit.text + text[offset(edit.end):]
    return text
