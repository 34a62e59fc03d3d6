"""The policy's vocabulary: risk levels, action types, findings and the verdict built from them.

Risk is ordered, ``none < low < medium < high < critical``, so a compound command is as risky
as its riskiest part and "needs approval" is one comparison against the policy's threshold.
Critical is reserved for blocked actions: nothing critical is ever offered for approval.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

LunaRisk = Literal["safe", "moderate", "dangerous"]


class Risk(enum.IntEnum):
    """How much harm an action can do, from ``NONE`` to ``CRITICAL`` (blocked)."""

    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        """The lower-case name used in APIs and policy files: ``"medium"``."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Risk:
        """``Risk.from_label("high")``; raises ``ValueError`` naming the valid labels."""
        try:
            return cls[label.strip().upper()]
        except KeyError:
            valid = ", ".join(r.label for r in cls)
            raise ValueError(f"{label!r} is not a risk level; use one of {valid}") from None


class ActionType(enum.StrEnum):
    """What kind of thing an action does; the values are seed 000's ``action_type`` names."""

    FILE_CREATE = "FileCreate"
    FILE_EDIT = "FileEdit"
    FILE_DELETE = "FileDelete"
    COMMAND_EXEC = "CommandExec"
    NETWORK_CALL = "NetworkCall"
    UNKNOWN = "Unknown"


class Decision(enum.StrEnum):
    """What the agent does with a verdict."""

    RUN = "run"
    ASK = "ask"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Finding:
    """One reason an action is as risky as it is."""

    risk: Risk
    reason: str
    blocked: bool = False

    @classmethod
    def block(cls, reason: str) -> Finding:
        """A finding that refuses the action outright."""
        return cls(Risk.CRITICAL, f"blocked: {reason}", blocked=True)


@dataclass(frozen=True)
class Verdict:
    """The policy's judgement of one action.

    ``reasons`` are human-readable, most severe first. ``needs_approval`` is true when the risk
    reaches the policy's threshold and the action is not blocked; a blocked action is refused
    and never offered for approval.
    """

    risk: Risk
    action_type: ActionType
    blocked: bool
    reasons: tuple[str, ...]
    needs_approval: bool

    @classmethod
    def of(cls, action_type: ActionType, findings: Iterable[Finding], threshold: Risk) -> Verdict:
        """Combine ``findings``: the verdict is as risky as the riskiest of them."""
        ordered = sorted(findings, key=lambda f: (not f.blocked, -f.risk))
        blocked = any(f.blocked for f in ordered)
        risk = Risk.CRITICAL if blocked else max((f.risk for f in ordered), default=Risk.NONE)
        reasons = tuple(dict.fromkeys(f.reason for f in ordered))
        return cls(risk, action_type, blocked, reasons, not blocked and risk >= threshold)

    @property
    def decision(self) -> Decision:
        """``REFUSE`` if blocked, ``ASK`` if a person must approve, else ``RUN``."""
        if self.blocked:
            return Decision.REFUSE
        return Decision.ASK if self.needs_approval else Decision.RUN

    @property
    def summary(self) -> str:
        """The most severe reason, for a one-line message."""
        return self.reasons[0] if self.reasons else "no risk found"


# A rule judges one program: ``rule(name, args, roots)``, where ``args`` are the words after
# the program name and ``roots`` the policy's extra protected paths.
Rule = Callable[[str, Sequence[str], frozenset[str]], list[Finding]]


def luna_risk(judged: Verdict | Risk) -> LunaRisk:
    """Seed 001's three words: none/low are ``safe``, medium ``moderate``, high and critical
    ``dangerous``."""
    risk = judged.risk if isinstance(judged, Verdict) else judged
    if risk <= Risk.LOW:
        return "safe"
    return "moderate" if risk == Risk.MEDIUM else "dangerous"
