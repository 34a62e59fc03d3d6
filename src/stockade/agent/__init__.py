"""The agent: a pydantic-ai loop whose every tool call passes the policy first.

``rules`` (requests into steps) and ``planner`` (those steps as a ``FunctionModel``) stand
in for a language model when none is configured; ``model`` picks one; ``tools`` are the
seven tools and the gate; ``loop`` runs, pauses for approval and resumes.
"""
