"""DSPy signatures: the typed contract between modeldebug and an LM (imports dspy: load lazily).

``DebugAnalysis`` takes the run's metrics, the rule engine's findings and the user's issue text,
and returns the spec's ``issues`` and ``recommendations`` as pydantic models, a ranking of the
rule findings and short explanations. ``AskRun`` is the question-answering signature the ReAct
agent in ``chat`` runs over a stored run's tools.
"""

from __future__ import annotations

from typing import Literal, Optional

import pydantic

from modeldebug.llm.settings import load_dspy

dspy = load_dspy()


class LLMIssue(pydantic.BaseModel):
    """One issue as the spec's DebugAnalysisModule returns it."""

    type: Literal["gradient", "activation", "memory", "performance"]
    severity: Literal["low", "medium", "high"]
    description: str
    location: Optional[str] = None
    finding_id: Optional[str] = pydantic.Field(
        None, description="Id (F1, F2, ...) of the rule finding this issue restates; null for a new issue."
    )
    kind: Optional[str] = pydantic.Field(
        None, description="For a new issue: the closest modeldebug finding kind (e.g. dead_relu), or null."
    )


class LLMRecommendation(pydantic.BaseModel):
    """One recommendation as the spec's DebugAnalysisModule returns it."""

    type: Literal["fix", "optimization", "best_practice"]
    description: str
    implementation: Optional[str] = None
    finding_id: Optional[str] = pydantic.Field(None, description="Id of the finding it addresses, if any.")


class DebugAnalysis(dspy.Signature):
    """Analyze the debugging metrics of a PyTorch training run and the findings of modeldebug's rule engine.

    The findings were measured; treat them as facts and never drop one. Explain them in plain words
    for the user's issue, rank them from most to least likely to explain it, name issues the rules
    missed only when the metrics support them, and give concrete fixes with code where possible.
    """

    metrics: str = dspy.InputField(desc="JSON: run summary, series (first/last/min/max), each layer's latest statistics")
    findings: str = dspy.InputField(desc="JSON list of the rule engine's findings, each with an id (F1, F2, ...)")
    issue: str = dspy.InputField(desc="What the user sees, in their words (may be empty)")

    summary: str = dspy.OutputField(desc="Two to four plain sentences: what is wrong and what to do first")
    ranking: list[str] = dspy.OutputField(desc="Finding ids, most likely cause of the user's issue first")
    issues: list[LLMIssue] = dspy.OutputField(
        desc="Identified issues; set finding_id when an issue restates a rule finding"
    )
    recommendations: list[LLMRecommendation] = dspy.OutputField(desc="Fixes, optimizations, best practices")


class AskRun(dspy.Signature):
    """Answer a question about a stored PyTorch training run, using the tools to read its recorded numbers.

    Look at the evidence before answering; cite the numbers (steps, values, layer names) you used.
    The findings come from modeldebug's rule engine and were measured.
    """

    question: str = dspy.InputField()
    run_overview: str = dspy.InputField(desc="JSON: the run, its findings and which series and layers exist")
    answer: str = dspy.OutputField(desc="A direct answer in a few sentences, with the numbers behind it")
