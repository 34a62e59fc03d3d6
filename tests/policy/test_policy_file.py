"""An operator's policy file changes the threshold and the ratings, and never unblocks a
blocked pattern. The commands are data for the policy; none is run."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.errors import InvalidInput
from stockade.policy import Command, Risk, classify, load_policy

TOML = """
threshold = "high"
blocked_programs = ["terraform", "git push"]
protected_paths = ["/data"]

[program_risks]
make = "low"
rm = "low"
"""

YAML = """
threshold: high
blocked_programs: [terraform, git push]
protected_paths: [/data]
program_risks:
  make: low
  rm: low
"""


@pytest.fixture(params=[("policy.toml", TOML), ("policy.yaml", YAML)], ids=["toml", "yaml"])
def policy_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    name, text = request.param
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_threshold_moves_what_waits_for_a_person(policy_file: Path) -> None:
    policy = load_policy(policy_file)
    assert policy.threshold is Risk.HIGH
    installing = classify(Command("pip install requests"), policy)
    assert installing.risk is Risk.MEDIUM
    assert not installing.needs_approval  # below the raised threshold
    assert classify(Command("pip install requests")).needs_approval  # the default still waits


def test_added_programs_are_blocked_wherever_they_appear(policy_file: Path) -> None:
    policy = load_policy(policy_file)
    for command in ("terraform apply", "sudo terraform destroy", "echo x; git push origin main"):
        assert classify(Command(command), policy).blocked, command
    assert not classify(Command("git status"), policy).blocked
    assert not classify(Command("terraform apply")).blocked  # only with the file


def test_overrides_change_ratings_but_never_unblock(policy_file: Path) -> None:
    policy = load_policy(policy_file)
    assert classify(Command("make all"), policy).risk is Risk.LOW
    assert classify(Command("rm old.log"), policy).risk is Risk.LOW
    assert classify(Command("rm -rf /"), policy).blocked
    assert classify(Command("rm -rf /data"), policy).blocked  # a protected path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('threshold = "extreme"', "threshold"),
        ('colour = "blue"', "colour"),
        ("protected_paths = ['relative/path']", "protected_paths"),
        ('[program_risks]\nmake = "critical"', "program_risks"),
    ],
)
def test_a_bad_file_names_the_bad_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as caught:
        load_policy(path)
    assert key in caught.value.message


def test_a_file_that_is_not_toml_or_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("threshold = = high")
    with pytest.raises(InvalidInput):
        load_policy(path)
    missing = tmp_path / "absent.toml"
    with pytest.raises(InvalidInput):
        load_policy(missing)
