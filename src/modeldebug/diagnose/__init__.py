"""ErrorDiagnoser: an exception (or a saved traceback) -> a ``runtime_error`` Finding.

Two entry points share one table of message patterns (``patterns.PATTERNS``: regex -> cause and
an explanation builder), so an exception object and the text of its traceback are explained by
the same code:

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

A wrapped exception (``raise ValueError(...) from exc``, in either form) is explained by its chain:
the innermost cause a pattern explains leads, and the message names the exceptions that wrap it
(``evidence.chain``, innermost first). Exception text is cleaned of terminal escapes and control
characters (``clean_text``) before anything quotes it.

Causes (``evidence.cause``): shape_mismatch, dtype_mismatch, device_mismatch, inplace_autograd,
out_of_memory, nan_detected, other. An unknown error is still a finding (cause ``other``) that
points at the line that raised.

Layout: ``context`` (what a builder knows: Context, Diagnosis, message helpers), ``parse`` (an
exception or a traceback's text -> Context), ``patterns`` (the table and ``match``), and the
builders by family: ``shapes``, ``dtype_device``, ``autograd``, ``memory``, ``numerics``.
"""

from __future__ import annotations

import re
from typing import Any

from modeldebug.diagnose.autograd import run_facts
from modeldebug.diagnose.context import Context, Diagnosis
from modeldebug.diagnose.context import first_line
from modeldebug.diagnose.parse import (clean_text, context_from_exception, context_from_text, contexts_from_text,
                                       describe_tensor, module_names_of, not_a_traceback)
from modeldebug.diagnose.patterns import CAUSES, CONTRACT_CAUSES, PATTERNS, Pattern, match, matches

_MAX_CHAIN = 8
from modeldebug.findings import make_finding
from modeldebug.types import Finding


def diagnose_exception(exc: BaseException, *, module_names: Any = None, step: int | None = None,
                       facts: Any = None) -> Finding:
    """A ``runtime_error`` Finding for an exception raised while training.

    ``module_names``: ``id(module or parameter) -> qualified name`` (:func:`module_names_of`), or the
    model itself; without it the module is named by its class. ``facts``: what the run watching it
    knows (:func:`run_facts`: trainable parameters, the last forward's grad mode).
    """
    if not isinstance(exc, BaseException):
        raise TypeError(f"Expected `exc` to be an exception but got {type(exc).__name__}")
    chain = [exc]  # outermost first, along `raise ... from`
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain and len(chain) < _MAX_CHAIN:
        chain.append(chain[-1].__cause__)
    contexts = []
    for e in reversed(chain):  # innermost first
        try:
            contexts.append(context_from_exception(e, module_names, facts))
        except Exception:  # never fail to explain: fall back to the message alone
            contexts.append(Context(error_type=type(e).__name__, message=clean_text(str(e))))
    return _finding(contexts, step)


def diagnose_text(text: str) -> Finding:
    """A ``runtime_error`` Finding from a traceback saved as text (or just its last line)."""
    if not isinstance(text, str):
        raise TypeError(f"Expected `text` to be a str but got {type(text).__name__}")
    return _finding(contexts_from_text(text), None)


def explain(exc_or_text: BaseException | str | bytes, *, module_names: Any = None, step: int | None = None) -> Finding:
    """Explain an exception object or a traceback's text: ``md.explain(exc)``."""
    if isinstance(exc_or_text, BaseException):
        return diagnose_exception(exc_or_text, module_names=module_names, step=step)
    if isinstance(exc_or_text, bytes):
        exc_or_text = exc_or_text.decode("utf-8", "replace")
    if isinstance(exc_or_text, str):
        return diagnose_text(exc_or_text)
    raise TypeError(f"Expected an exception or a traceback's text but got {type(exc_or_text).__name__}")


def _finding(chain: list[Context], step: int | None) -> Finding:
    """The finding of an exception chain (innermost first): the first link a pattern explains leads,
    else the exception that was raised last."""
    ctx = next((c for c in chain if matches(c)), chain[-1])
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
    message += _chain_sentence(chain, ctx)
    causes = [c for c in d.causes if c in CONTRACT_CAUSES] or ["other"]
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
        "chain": [_link(c) for c in chain] if len(chain) > 1 else None,
    }
    always = ("error_type", "cause", "module", "module_type", "inputs", "parameters", "error_message", "from_text")
    evidence = {k: v for k, v in evidence.items() if k in always or v not in (None, [], {}, False)}
    evidence.update({k: v for k, v in d.evidence.items() if v is not None})
    return make_finding(
        "runtime_error", severity="high", confidence=d.confidence,
        location=ctx.module or ctx.near_module or ctx.module_type or ctx.module_hint,
        step=step, message=message, evidence=evidence, causes=causes,
        recommendations=d.recommendations,
    )


def _link(ctx: Context) -> dict[str, Any]:
    return {"error_type": ctx.error_type, "message": first_line(ctx.message)[:500], "raised_at": ctx.where}


def _chain_sentence(chain: list[Context], leader: Context) -> str:
    """Names the exceptions that wrap the one explained (or that it wraps, when none is explained)."""
    def named(c: Context) -> str:
        return f"`{c.error_type}: {first_line(c.message)[:200]}`" + (f" at {c.where}" if c.where else "")

    i = chain.index(leader)
    outer, inner = chain[i + 1:], chain[:i]
    text = ""
    if outer:
        text += " It was raised again as " + ", then ".join(named(c) for c in outer) + " (raise ... from)."
    if inner:
        text += " It was raised from " + ", from ".join(named(c) for c in reversed(inner)) + "."
    return text


__all__ = ["CAUSES", "PATTERNS", "Context", "Diagnosis", "Pattern", "context_from_exception", "context_from_text",
           "clean_text", "describe_tensor", "diagnose_exception", "diagnose_text", "explain", "match", "matches",
           "module_names_of", "not_a_traceback", "run_facts"]
