"""Stockade: run AI agents and the commands they choose in disposable sandboxes,
with a person approving every risky action.

The public surface is small on purpose: the app factory, the settings object and the
error root. Everything else is reached through the HTTP API or the CLI.
"""

from stockade.errors import StockadeError
from stockade.settings import Settings
from stockade.version import __version__

__all__ = ["Settings", "StockadeError", "__version__", "create_app"]


def __getattr__(name: str) -> object:
    # create_app pulls in FastAPI and the whole service graph; import it only when asked,
    # so `stockade version` and the settings stay cheap to import.
    if name == "create_app":
        from stockade.api.app import create_app

        return create_app
    raise AttributeError(name)
