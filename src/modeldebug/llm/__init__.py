"""The optional LLM layer (extra ``llm``: ``dspy>=3.4.1,<3.5``): explain, rank, answer questions.

The rule engine's report is always the answer; an LM only adds prose, a ranking and issues
marked ``source="llm"``. Nothing here imports dspy at import time: ``settings``, ``helpers`` and
``analysis`` work without the extra, and :func:`load_dspy` raises MissingExtraError naming it.

- ``settings``: LMSettings from ``--lm``/``--lm-api-base`` or ``MODELDEBUG_LM``/``MODELDEBUG_LM_API_BASE``.
- ``signatures``: DebugAnalysis (typed dspy.Signature) and AskRun.
- ``analysis``: LLMAnalysis (what the LM said, as the run store keeps it) and the functions that
  split an enriched report and apply an analysis again, directly or through a RunStore (no dspy).
- ``analyst``: DebugAnalysisModule and :func:`enrich_report` (never raises: falls back to the rules).
- ``chat``: :func:`ask`, a dspy.ReAct agent over a stored run's series, layers and findings.
"""

from modeldebug.llm.settings import LMSettings, load_dspy, resolve_settings

__all__ = ["LMSettings", "enrich_report", "ask", "load_dspy", "resolve_settings"]


def enrich_report(*args, **kwargs):
    from modeldebug.llm.analyst import enrich_report as _enrich

    return _enrich(*args, **kwargs)


def ask(*args, **kwargs):
    from modeldebug.llm.chat import ask as _ask

    return _ask(*args, **kwargs)
