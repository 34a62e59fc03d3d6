"""The operator's policy: the approval threshold and overrides of the default rules.

A policy file is TOML (``.toml``) or YAML (``.yaml``/``.yml``), every key optional::

    # stockade-policy.toml
    threshold = "high"                 # none | low | medium | high | critical (default medium)
    blocked_programs = ["terraform", "git push"]
    protected_paths = ["/data", "~/photos"]

    [program_risks]                    # none | low | medium | high
    make = "low"
    "docker run" = "high"

- ``threshold``: actions at or above it wait for a person; below it they run. ``critical``
  lets everything that is not blocked run unattended.
- ``blocked_programs``: programs (``"terraform"``) or a program and its first argument
  (``"git push"``) refused outright, wherever they appear in a command.
- ``program_risks``: replaces a program's default rating, keyed the same way. An override
  never unblocks a blocked pattern: ``rm = "low"`` still refuses ``rm -rf /``.
- ``protected_paths``: more roots treated like ``/etc``: ``rm -rf`` of one is blocked and
  writing under one is high.

Unknown keys and bad values raise ``InvalidInput`` naming the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from stockade.errors import InvalidInput
from stockade.policy.risk import Risk

_Key = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[^\s/]+( \S+)?$")]
_Path = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[/~]")]
_Threshold = Literal["none", "low", "medium", "high", "critical"]
_Override = Literal["none", "low", "medium", "high"]


@dataclass(frozen=True)
class Policy:
    """How strict the gate is. ``Policy()`` is the default: approval from medium up."""

    threshold: Risk = Risk.MEDIUM
    blocked_programs: frozenset[str] = frozenset()
    program_risks: Mapping[str, Risk] = field(default_factory=dict)
    protected_paths: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "program_risks", MappingProxyType(dict(self.program_risks)))
        object.__setattr__(self, "blocked_programs", frozenset(self.blocked_programs))
        object.__setattr__(self, "protected_paths", frozenset(self.protected_paths))

    def blocks(self, name: str, args: Sequence[str]) -> str | None:
        """The ``blocked_programs`` entry that matches ``name args…``, if any."""
        return next((key for key in _keys(name, args) if key in self.blocked_programs), None)

    def override(self, name: str, args: Sequence[str]) -> tuple[str, Risk] | None:
        """The ``program_risks`` entry (key and risk) that matches ``name args…``, if any."""
        for key in _keys(name, args):
            if key in self.program_risks:
                return key, self.program_risks[key]
        return None


DEFAULT_POLICY = Policy()


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    threshold: _Threshold = "medium"
    blocked_programs: list[_Key] = Field(default_factory=list)
    program_risks: dict[_Key, _Override] = Field(default_factory=dict)
    protected_paths: list[_Path] = Field(default_factory=list)


def load_policy(path: str | Path) -> Policy:
    """Read the TOML or YAML policy file at ``path``.

    Raises ``InvalidInput`` if it cannot be read or parsed, or names a key or value it should
    not.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise InvalidInput(f"{path}: a policy file must end in .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the policy file: {exc}") from exc
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "TOML" if suffix == ".toml" else "YAML"
        raise InvalidInput(f"{path}: not valid {kind}: {exc}") from exc
    return parse_policy({} if data is None else data, source=str(path))


def parse_policy(data: object, *, source: str = "policy") -> Policy:
    """Build a ``Policy`` from already-parsed settings (a mapping); ``source`` names them in
    errors."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{source}: the policy must be a table of settings, not {data!r}")
    try:
        parsed = _PolicyFile.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInput(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from exc
    return Policy(
        threshold=Risk.from_label(parsed.threshold),
        blocked_programs=frozenset(parsed.blocked_programs),
        program_risks={key: Risk.from_label(v) for key, v in parsed.program_risks.items()},
        protected_paths=frozenset(parsed.protected_paths),
    )


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"] if part != "[key]")
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    return f"{where}: {error['msg']} (got {error['input']!r})"


def _keys(name: str, args: Sequence[str]) -> tuple[str, ...]:
    """The two keys a command matches, most specific first: ``"git push"``, ``"git"``."""
    return (f"{name} {args[0]}", name) if args else (name,)
