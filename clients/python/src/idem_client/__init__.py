"""idem from Python: name an action by (scope, intent), enqueue it in your own
transaction or over HTTP, await its receipt; adapters for LangGraph and the OpenAI Agents
SDK live in :mod:`idem_client.langgraph` and :mod:`idem_client.openai_agents`."""

from .errors import (
    Conflict,
    IdemError,
    InvalidArguments,
    NotFound,
    Unauthorized,
    Unavailable,
    Unsettled,
)
from .http import AsyncIdemHttp, IdemHttp, ToolResult, ToolSpec
from .ids import arguments_id, canonical_json, intent_id
from .sql import await_receipt, await_receipt_async, enqueue, enqueue_async, status
from .status import SETTLED_STATES, ActionStatus, Enqueued

__all__ = [
    "SETTLED_STATES",
    "ActionStatus",
    "AsyncIdemHttp",
    "Conflict",
    "Enqueued",
    "IdemError",
    "IdemHttp",
    "InvalidArguments",
    "NotFound",
    "ToolResult",
    "ToolSpec",
    "Unauthorized",
    "Unavailable",
    "Unsettled",
    "arguments_id",
    "await_receipt",
    "await_receipt_async",
    "canonical_json",
    "enqueue",
    "enqueue_async",
    "intent_id",
    "status",
]
