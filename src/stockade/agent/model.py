"""Which model drives the agent: one setting, ``STOCKADE_LLM_MODEL``.

- unset: the rule-based planner (``planner.py``), a ``FunctionModel``;
- with ``STOCKADE_LLM_BASE_URL``: an OpenAI-compatible server (Ollama, vLLM, llama.cpp…)
  serving that model name, with ``STOCKADE_LLM_API_KEY`` if it needs one;
- otherwise: any model name pydantic-ai knows, such as ``openai:gpt-4o`` or
  ``anthropic:claude-sonnet-4-5`` (its provider's usual key variable, or
  ``STOCKADE_LLM_API_KEY`` for OpenAI).
"""

from __future__ import annotations

from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from stockade.agent.planner import rules_model
from stockade.errors import InvalidInput
from stockade.settings import Settings

FALLBACK = "disabled (using fallback parser)"


def build_model(settings: Settings) -> Model:
    """The model ``settings`` name; raises ``InvalidInput`` for one that cannot be built."""
    name = (settings.llm_model or "").strip()
    if not name:
        return rules_model()
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    try:
        if settings.llm_base_url:
            provider = OpenAIProvider(base_url=settings.llm_base_url, api_key=api_key or "none")
            return OpenAIChatModel(name.removeprefix("openai:"), provider=provider)
        if api_key and name.startswith("openai:"):
            return OpenAIChatModel(
                name.removeprefix("openai:"), provider=OpenAIProvider(api_key=api_key)
            )
        return infer_model(name)
    except Exception as exc:  # any provider's error becomes one clear message
        raise InvalidInput(f"STOCKADE_LLM_MODEL={name!r} cannot be used: {exc}") from exc


def describe(settings: Settings) -> str:
    """What ``/health`` says of the model: Luna's ``llm`` field, ``enabled`` or
    ``disabled (using fallback parser)`` exactly as Luna's clients read it."""
    return "enabled" if (settings.llm_model or "").strip() else FALLBACK
