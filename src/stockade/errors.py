"""Stockade's exceptions. Domain code raises these; ``api/errors.py`` maps them to HTTP.

::

    StockadeError
    ├── InvalidInput          the request cannot be acted on as given
    ├── AuthenticationFailed  the caller could not be identified
    ├── PermissionDenied      the caller is known but may not do this
    ├── NotFound              no such object, or one the caller may not see
    ├── Conflict              the object's state forbids it
    ├── PayloadTooLarge       the request body is over the limit
    ├── RateLimited           too many requests in the caller's window
    ├── StorageFull           a sandbox's storage has no room left
    └── Unavailable           a part the daemon needs is down

The class docstring is the default message. Nothing here knows about HTTP status codes.
"""

from __future__ import annotations


class StockadeError(Exception):
    """Something went wrong."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip() or type(self).__name__
        super().__init__(self.message)


class InvalidInput(StockadeError):
    """The request cannot be acted on as given."""


class AuthenticationFailed(StockadeError):
    """Authentication is required: send a bearer token, an API key or HTTP Basic."""


class PermissionDenied(StockadeError):
    """You are not allowed to do this."""


class NotFound(StockadeError):
    """No such object."""


class Conflict(StockadeError):
    """The object's current state does not allow this."""


class PayloadTooLarge(StockadeError):
    """The request body is larger than the daemon accepts."""


class RateLimited(StockadeError):
    """Too many requests; slow down."""

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class StorageFull(StockadeError):
    """The sandbox's storage is full."""


class Unavailable(StockadeError):
    """A part the daemon needs is not available right now."""
