"""The package's public surface is a decision (STYLE habit 1)."""

from __future__ import annotations

import stockade


def test_all_is_exactly_the_public_surface() -> None:
    assert sorted(stockade.__all__) == ["Settings", "StockadeError", "__version__", "create_app"]
    for name in stockade.__all__:
        assert getattr(stockade, name) is not None


def test_create_app_is_the_factory() -> None:
    from stockade.api.app import create_app

    assert stockade.create_app is create_app
