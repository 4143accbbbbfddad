"""Errors a caller can branch on: retry, fix the request, or read the existing action."""

from __future__ import annotations

import uuid


class IdemError(Exception):
    """Base of every error this package raises."""


class Conflict(IdemError):
    """The id or (scope, intent) already names an action with other arguments.

    Never retry with these arguments: read ``action_id``, or give a *different* action a
    different intent.
    """

    def __init__(self, message: str, action_id: uuid.UUID | None) -> None:
        super().__init__(message)
        self.action_id = action_id


class InvalidArguments(IdemError):
    """The request can never succeed as it is; ``field`` is a JSON pointer into the request
    (``/args/amount``, ``/intent``, ``/cell``) when the server named one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unavailable(IdemError):
    """idem (its store or its HTTP server) could not answer. Retrying the same call, with
    the same intent or id, is safe: it cannot act twice."""


class Unauthorized(IdemError):
    """The token is missing, revoked or lacks the scope (HTTP 401/403): not retryable until
    the token is fixed."""


class NotFound(IdemError):
    """No action has this id."""

    def __init__(self, action_id: uuid.UUID) -> None:
        super().__init__(f"no action {action_id}")
        self.action_id = action_id


class Unsettled(IdemError):
    """The action did not settle within the wait; it goes on. Wait again with the same id."""

    def __init__(self, action_id: uuid.UUID, state: str) -> None:
        super().__init__(f"action {action_id} not settled in time (state {state})")
        self.action_id = action_id
        self.state = state
