"""The README's curl walk-through runs, unchanged, against a real daemon (STYLE habit 14)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from stockade.testing import daemon_process

README = Path(__file__).parents[2] / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    match = re.search(r"<!-- walkthrough:[^>]*-->\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert match, "README.md lost its walk-through block"
    return match.group(1)


def test_readme_walkthrough(tmp_path: Path) -> None:
    home = tmp_path / "state"
    with daemon_process(home) as daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
        env |= {"BASE": daemon.url, "STOCKADE_HOME": str(home)}
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough()],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"status": "healthy"' in out
    assert '"username": "admin"' in out
    assert '"api_key"' in out
    assert "\n204\n" in out
    assert '"status": 401' in out
    assert '"detail": "API key has been revoked"' in out
    assert '"username": "alice"' in out
    assert re.search(r'^stockade_http_requests_total\{method="GET"', out, re.MULTILINE)
    assert '"status": "running"' in out
    assert '"stdout": "1000\\nnote\\n"' in out
    assert '"path": "/tmp/data.txt"' in out
    assert "\nhello\n" in out
    assert '"message":"main process up"' in out
    assert '"type": "namespace"' in out
    assert "204\nterminated\n" in out
    assert '"action_type": "FileCreate"' in out
    assert '"risk_level": "medium"' in out
    assert "+hello from the agent" in out
    assert "\napproved\n" in out
    assert '"status": "completed"' in out
    assert '"decision": "approved"' in out
    assert "\ntask_added\n" in out
    assert '"answer": 42' in out
    assert '"logs": "hi from a sandbox\\n"' in out
    assert '"tasks_registered": 1' in out
