"""A key's per-sandbox permission levels."""

from __future__ import annotations

import pytest

from stockade.services.principal import Permission, Principal, Role


def _key(permissions: dict[str, Permission] | None) -> Principal:
    return Principal("user-1", "u", Role.USER, "api_key", "key-1", permissions)


@pytest.mark.parametrize(
    ("granted", "needed", "allowed"),
    [
        (Permission.READ, Permission.READ, True),
        (Permission.READ, Permission.WRITE, False),
        (Permission.WRITE, Permission.READ, True),
        (Permission.WRITE, Permission.ADMIN, False),
        (Permission.ADMIN, Permission.WRITE, True),
    ],
)
def test_levels_include_the_ones_below(
    granted: Permission, needed: Permission, allowed: bool
) -> None:
    assert _key({"env-1": granted}).can("env-1", needed) is allowed


def test_a_restricted_key_reaches_only_its_sandboxes() -> None:
    key = _key({"env-1": Permission.ADMIN})
    assert key.is_restricted
    assert not key.can("env-2", Permission.READ)
    assert key.rate_key == "key:key-1"


def test_an_unrestricted_principal_reaches_everything() -> None:
    login = Principal("user-1", "u", Role.ADMIN, "jwt")
    assert login.is_admin
    assert not login.is_restricted
    assert login.can("anything", Permission.ADMIN)
    assert login.rate_key == "user:user-1"
