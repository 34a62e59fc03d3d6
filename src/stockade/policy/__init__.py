"""The policy: judges every action an agent asks for, before it runs. Pure code, no I/O
(apart from ``load_policy``, which reads the file it is given).

::

    from stockade.policy import Command, classify

    verdict = classify(Command("sudo rm -rf /"))
    verdict.blocked, verdict.risk, verdict.reasons
    # True, Risk.CRITICAL, ('blocked: rm -rf / deletes the root file system', …)

Modules: ``risk`` (levels, verdicts), ``actions`` (what can be judged), ``classify`` (the
entry point), ``commands`` (shell commands), ``shell`` (parsing), ``words`` (``$'…'`` and
brace expansion), ``wrappers`` (sudo, sh -c…), ``blocklist`` (refused outright),
``programs``/``files``/``network``/``packages`` (default ratings), ``paths`` (what a path
means), ``config`` (policy files).
"""

from stockade.policy.actions import (
    Action,
    Command,
    FileCreate,
    FileDelete,
    FileEdit,
    NetworkCall,
    UnknownAction,
)
from stockade.policy.classify import classify, gate
from stockade.policy.config import DEFAULT_POLICY, Policy, load_policy, parse_policy
from stockade.policy.risk import ActionType, Decision, LunaRisk, Risk, Verdict, luna_risk

__all__ = [
    "DEFAULT_POLICY",
    "Action",
    "ActionType",
    "Command",
    "Decision",
    "FileCreate",
    "FileDelete",
    "FileEdit",
    "LunaRisk",
    "NetworkCall",
    "Policy",
    "Risk",
    "UnknownAction",
    "Verdict",
    "classify",
    "gate",
    "load_policy",
    "luna_risk",
    "parse_policy",
]
