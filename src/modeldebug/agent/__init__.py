"""ModelDebuggingAgent: ``debug_model(DebuggingRequest) -> DebuggingResponse``, the product spec's agent.

Given a model and data it runs a short probe on a copy, never on the user's objects:

1. ``copy.deepcopy((model, optimizer's param groups))`` in one call, so the copied groups hold
   the copied model's parameters (also parameters outside the model, such as a learned loss
   weight); a fresh optimizer of the same class is built over them with the same group
   hyperparameters and loads a deep copy of the original's ``state_dict`` (momentum, Adam moments
   and step counts carry over; ``load_state_dict`` alone would share the state tensors).
2. The probe trains the copy for ``analysis_config.probe_steps`` steps under :func:`watch`
   (every step sampled, an in-memory run store), cycling the loader or repeating the one batch.
   The torch RNG state is forked, so the user's random stream is not advanced either.
3. An exception from the user's model ends the probe and becomes a ``runtime_error`` finding
   (ErrorDiagnoser); the rules run on what was collected up to then.
4. The tools look at the copy and the recorded run; the rules diagnose; an LM (when configured)
   explains and ranks (never required: on any failure its notice is kept and the rules' report
   stands).

With ``run="latest"`` (or a run id) the stored run is analysed instead, and no model is needed;
without an LM of its own the agent shows what an LM said about that run before (stored by
``modeldebug run/report --lm``), marked as the LM's.
The user's ``issue`` text orders the tools and the findings (see ``llm.helpers.match_issue``).

Each tool is called through its own ``for_run`` / ``for_probe`` (see :mod:`modeldebug.tools`); a
stored run is evaluated once (``pipeline.evaluated_run``) for the agent and every tool call on it.
``models``: the request and response; ``probe``: the copy and its short run; ``core``: the agent.
"""

from modeldebug.agent.core import ModelDebuggingAgent
from modeldebug.agent.models import (
    AgentRecommendation,
    AnalysisConfig,
    DebuggerMetrics,
    DebuggingRequest,
    DebuggingResponse,
    ProfilingConfig,
    Visualizations,
)
from modeldebug.agent.probe import clone_for_probe

__all__ = ["AgentRecommendation", "AnalysisConfig", "DebuggerMetrics", "DebuggingRequest", "DebuggingResponse",
           "ModelDebuggingAgent", "ProfilingConfig", "Visualizations", "clone_for_probe"]
