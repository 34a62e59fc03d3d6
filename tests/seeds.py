"""The seed projects' published documents, read at test time (never copied in)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def seeds_dir() -> Path:
    """``$STOCKADE_SEEDS``, else a ``shared/seeds`` beside the checkout or above it, else
    ``/work/shared/seeds``. Not finding them fails the test: they are its input."""
    candidates = [Path(os.environ["STOCKADE_SEEDS"])] if os.environ.get("STOCKADE_SEEDS") else []
    candidates += [p / "shared" / "seeds" for p in REPO.parents]
    candidates.append(Path("/work/shared/seeds"))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    pytest.fail("the seed documents were not found; set STOCKADE_SEEDS", pytrace=False)


def seed_text(number: str) -> str:
    matches = sorted(seeds_dir().glob(f"{number}_*.txt"))
    assert matches, f"no seed {number} in {seeds_dir()}"
    return matches[0].read_text()


def fenced_block(text: str, heading: str, language: str = "bash") -> str:
    """The first fenced block of ``language`` after the Markdown ``heading``."""
    start = text.index(heading)
    match = re.search(rf"```{language}\n(.*?)\n```", text[start:], re.DOTALL)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


def run_script(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a seed's shell script with bash, as its reader would: without this test run's
    ``STOCKADE_*`` variables. Its exit status must be 0."""
    result = subprocess.run(
        ["bash", "-c", script],
        env={k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result
