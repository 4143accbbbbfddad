"""What an action is and how it ended, as every surface reports it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: States an action does not leave on its own.
SETTLED_STATES = frozenset({"succeeded", "failed", "rejected", "needs_human", "dead"})


@dataclass(frozen=True)
class Enqueued:
    """The action an enqueue named: the same answer whether this call created it or
    found it (``created`` tells which)."""

    action_id: uuid.UUID
    state: str
    created: bool


@dataclass(frozen=True)
class ActionStatus:
    """An action's state and, once it succeeded, its receipt (the partner's reference)."""

    action_id: uuid.UUID
    cell: str
    state: str
    attempts: int
    reason: str | None
    receipt: dict[str, Any] | None
    created_at: datetime | None = None
    settled_at: datetime | None = None

    @property
    def settled(self) -> bool:
        return self.state in SETTLED_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ActionStatus:
        def when(v: Any) -> datetime | None:
            return datetime.fromisoformat(v.replace("Z", "+00:00")) if isinstance(v, str) else None

        return cls(
            action_id=uuid.UUID(body["action_id"]),
            cell=body["cell"],
            state=body["state"],
            attempts=int(body.get("attempts", 0)),
            reason=body.get("reason"),
            receipt=body.get("receipt"),
            created_at=when(body.get("created_at")),
            settled_at=when(body.get("settled_at")),
        )
