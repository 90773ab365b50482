"""Which LM to use and how to build it: no dspy import until an LM is actually wanted.

``--lm MODEL`` / ``MODELDEBUG_LM`` names a LiteLLM-style model (``openai/gpt-4o-mini``,
``ollama_chat/llama3``); ``--lm-api-base URL`` / ``MODELDEBUG_LM_API_BASE`` points it at an
OpenAI-compatible server. ``MODELDEBUG_LM_API_KEY`` is the key (a placeholder is sent to a
server given by ``api_base`` when none is set, as local servers want none).

The LM is built with ``cache=False`` (no disk cache unless ``cache=True`` is asked for),
``num_retries=0`` and a short ``timeout``: a diagnosis must never hang on an LM.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from modeldebug.errors import require

ENV_MODEL = "MODELDEBUG_LM"
ENV_API_BASE = "MODELDEBUG_LM_API_BASE"
ENV_API_KEY = "MODELDEBUG_LM_API_KEY"
ENV_TIMEOUT = "MODELDEBUG_LM_TIMEOUT"
EXTRA = "llm"
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LMSettings:
    model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_tokens: int = 4000
    temperature: float | None = None
    cache: bool = False

    def describe(self) -> str:
        return self.model + (f" at {self.api_base}" if self.api_base else "")


def resolve_settings(
    model: str | None = None,
    api_base: str | None = None,
    *,
    env: dict[str, str] | None = None,
    check_extra: bool = True,
) -> LMSettings | None:
    """LMSettings from explicit values, else the environment; None when no LM is asked for.

    With ``check_extra`` (the default) a missing dspy raises MissingExtraError naming the ``llm``
    extra now, before any work starts.
    """
    env = os.environ if env is None else env
    model = model or env.get(ENV_MODEL) or None
    api_base = api_base or env.get(ENV_API_BASE) or None
    if model is None:
        if api_base:
            raise ValueError(f"Expected --lm MODEL (or {ENV_MODEL}) with --lm-api-base but got no model")
        return None
    timeout = env.get(ENV_TIMEOUT)
    try:
        timeout_s = float(timeout) if timeout else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"Expected {ENV_TIMEOUT} to be a number of seconds but got {timeout!r}") from None
    settings = LMSettings(model=model, api_base=api_base, api_key=env.get(ENV_API_KEY) or None, timeout_s=timeout_s)
    if check_extra:
        load_dspy()
    return settings


def load_dspy():
    """Import dspy (MissingExtraError naming the ``llm`` extra when it is absent)."""
    return require("dspy", EXTRA)


LITELLM_LOCAL_COST_MAP = "LITELLM_LOCAL_MODEL_COST_MAP"


def import_litellm_offline() -> None:
    """Import LiteLLM (dspy's LM client, which dspy imports on an LM's first call) with its bundled
    model price list: on import it fetches one from the internet unless told not to, and a debugger
    must not call out. LiteLLM reads that setting from the environment only, so it is set for the
    import alone and the caller's environment is left as it was."""
    if "litellm" in sys.modules:
        return
    previous = os.environ.get(LITELLM_LOCAL_COST_MAP)
    os.environ[LITELLM_LOCAL_COST_MAP] = "True"
    try:
        import litellm  # noqa: F401
    except ImportError:  # dspy names the missing package when it needs it
        pass
    finally:
        if previous is None:
            os.environ.pop(LITELLM_LOCAL_COST_MAP, None)
        else:
            os.environ[LITELLM_LOCAL_COST_MAP] = previous


def build_lm(settings: LMSettings):
    """A dspy.LM for these settings: no disk cache, no retries, a bounded timeout."""
    dspy = load_dspy()
    import_litellm_offline()
    kwargs: dict[str, Any] = {"timeout": settings.timeout_s}
    if settings.api_base:
        kwargs["api_base"] = settings.api_base
        kwargs["api_key"] = settings.api_key or "not-needed"
    elif settings.api_key:
        kwargs["api_key"] = settings.api_key
    return dspy.LM(
        settings.model,
        cache=settings.cache,
        num_retries=0,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        **kwargs,
    )


def as_lm(lm: Any):
    """Accept LMSettings, a model name, or a ready dspy LM (e.g. ``dspy.utils.DummyLM`` in tests)."""
    if isinstance(lm, LMSettings):
        return build_lm(lm)
    if isinstance(lm, str):
        return build_lm(LMSettings(model=lm))
    import_litellm_offline()  # a caller's own dspy LM calls through LiteLLM too
    return lm
