"""idem's HTTP API from Python: submit, read with long-poll ``?wait=``, and the tool
endpoints the framework adapters use (``/v1/tools``: the same tools and answers as MCP).

:class:`IdemHttp` is synchronous, :class:`AsyncIdemHttp` asynchronous; both share the
request and response handling below, so they cannot drift.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import (
    Conflict,
    IdemError,
    InvalidArguments,
    NotFound,
    Unauthorized,
    Unavailable,
    Unsettled,
)
from .status import ActionStatus, Enqueued

#: The longest wait the server grants a single long poll (seconds).
MAX_POLL = 60


@dataclass(frozen=True)
class ToolSpec:
    """One tool as a model API wants it: name, description, JSON Schema of the arguments
    (strict-mode dialect, with the required ``intent``)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    cell: str | None
    effectful: bool


@dataclass(frozen=True)
class ToolResult:
    """A tool call's answer, written for a model: the receipt, or what to do next."""

    is_error: bool
    result: dict[str, Any]


def _submit_body(
    cell: str,
    args: Mapping[str, Any],
    scope: str | None,
    intent: str | None,
    action_id: uuid.UUID | str | None,
    ordering_key: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"cell": cell, "args": dict(args)}
    if action_id is not None:
        body["action_id"] = str(action_id)
    if scope is not None:
        body["intent_scope"] = scope
    if intent is not None:
        body["intent"] = intent
    if ordering_key is not None:
        body["ordering_key"] = ordering_key
    return body


def _raise_for(r: httpx.Response, action_id: uuid.UUID | None = None) -> None:
    if r.status_code < 400:
        return
    try:
        p = r.json()
    except ValueError:
        p = {}
    msg = str(p.get("error") or r.text or r.reason_phrase)
    if r.status_code == 409:
        existing = p.get("action_id")
        raise Conflict(msg, uuid.UUID(existing) if existing else None)
    if r.status_code in (401, 403):
        raise Unauthorized(msg)
    if r.status_code == 404 and action_id is not None:
        raise NotFound(action_id)
    if r.status_code in (429, 502, 503, 504):
        raise Unavailable(f"HTTP {r.status_code}: {msg}")
    if 400 <= r.status_code < 500:
        raise InvalidArguments(msg, p.get("field"))
    raise Unavailable(f"HTTP {r.status_code}: {msg}")


def _enqueued(r: httpx.Response) -> Enqueued:
    _raise_for(r)
    b = r.json()
    return Enqueued(uuid.UUID(b["action_id"]), b["state"], r.status_code == 201)


def _status(r: httpx.Response, aid: uuid.UUID) -> ActionStatus:
    _raise_for(r, aid)
    return ActionStatus.from_json(r.json())


def _tools(r: httpx.Response) -> list[ToolSpec]:
    _raise_for(r)
    return [
        ToolSpec(t["name"], t["description"], t["input_schema"], t.get("cell"), t["effectful"])
        for t in r.json()
    ]


def _tool_result(r: httpx.Response) -> ToolResult:
    _raise_for(r)
    b = r.json()
    return ToolResult(bool(b["is_error"]), b["result"])


def _as_id(action_id: uuid.UUID | str) -> uuid.UUID:
    return action_id if isinstance(action_id, uuid.UUID) else uuid.UUID(action_id)


def _transport_error(e: httpx.TransportError) -> Unavailable:
    return Unavailable(f"idem unreachable: {e!r}")


class _Base:
    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"}
        self._timeout = timeout

    def __repr__(self) -> str:
        # The token never appears in a repr, a log line or a traceback.
        return f"{type(self).__name__}({self._base!r}, token=<redacted>)"


class IdemHttp(_Base):
    """A synchronous client of ``idem serve``. The token needs the ``submit`` scope to
    submit and call tools, ``read`` to read actions."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        super().__init__(base_url, token, timeout)
        self._http = httpx.Client(base_url=self._base, headers=self._headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> IdemHttp:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise _transport_error(e) from e

    def submit(
        self,
        cell: str,
        args: Mapping[str, Any],
        *,
        scope: str | None = None,
        intent: str | None = None,
        action_id: uuid.UUID | str | None = None,
        ordering_key: str | None = None,
    ) -> Enqueued:
        """``POST /v1/actions``: the same call again is the same action."""
        body = _submit_body(cell, args, scope, intent, action_id, ordering_key)
        return _enqueued(self._send("POST", "/v1/actions", json=body))

    def status(self, action_id: uuid.UUID | str, *, wait: int = 0) -> ActionStatus:
        """``GET /v1/actions/{id}``, long-polling up to ``wait`` seconds (at most 60)."""
        aid = _as_id(action_id)
        w = max(0, min(wait, MAX_POLL))
        r = self._send("GET", f"/v1/actions/{aid}", params={"wait": w}, timeout=self._timeout + w)
        return _status(r, aid)

    def await_receipt(self, action_id: uuid.UUID | str, timeout: float) -> ActionStatus:
        """Long-poll until the action settles; :class:`Unsettled` after ``timeout``."""
        aid = _as_id(action_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            s = self.status(aid, wait=max(0, int(left)))
            if s.settled:
                return s
            if time.monotonic() >= deadline - 0.001 or left < 1:
                raise Unsettled(aid, s.state)

    def tools(self) -> list[ToolSpec]:
        """``GET /v1/tools``: every cell as a tool, and ``idem_status``."""
        return _tools(self._send("GET", "/v1/tools"))

    def call_tool(
        self, name: str, arguments: Mapping[str, Any], *, scope: str, wait_seconds: int = 20
    ) -> ToolResult:
        """``POST /v1/tools/{name}``: one tool call in ``scope`` (the run or thread)."""
        body = {"scope": scope, "arguments": dict(arguments), "wait_seconds": wait_seconds}
        r = self._send("POST", f"/v1/tools/{name}", json=body, timeout=self._timeout + wait_seconds)
        return _tool_result(r)


class AsyncIdemHttp(_Base):
    """:class:`IdemHttp` for asyncio."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        super().__init__(base_url, token, timeout)
        self._http = httpx.AsyncClient(base_url=self._base, headers=self._headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncIdemHttp:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise _transport_error(e) from e

    async def submit(
        self,
        cell: str,
        args: Mapping[str, Any],
        *,
        scope: str | None = None,
        intent: str | None = None,
        action_id: uuid.UUID | str | None = None,
        ordering_key: str | None = None,
    ) -> Enqueued:
        body = _submit_body(cell, args, scope, intent, action_id, ordering_key)
        return _enqueued(await self._send("POST", "/v1/actions", json=body))

    async def status(self, action_id: uuid.UUID | str, *, wait: int = 0) -> ActionStatus:
        aid = _as_id(action_id)
        w = max(0, min(wait, MAX_POLL))
        r = await self._send(
            "GET", f"/v1/actions/{aid}", params={"wait": w}, timeout=self._timeout + w
        )
        return _status(r, aid)

    async def await_receipt(self, action_id: uuid.UUID | str, timeout: float) -> ActionStatus:
        aid = _as_id(action_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            s = await self.status(aid, wait=max(0, int(left)))
            if s.settled:
                return s
            if time.monotonic() >= deadline - 0.001 or left < 1:
                raise Unsettled(aid, s.state)

    async def tools(self) -> list[ToolSpec]:
        return _tools(await self._send("GET", "/v1/tools"))

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any], *, scope: str, wait_seconds: int = 20
    ) -> ToolResult:
        body = {"scope": scope, "arguments": dict(arguments), "wait_seconds": wait_seconds}
        r = await self._send(
            "POST", f"/v1/tools/{name}", json=body, timeout=self._timeout + wait_seconds
        )
        return _tool_result(r)


__all__ = ["AsyncIdemHttp", "IdemError", "IdemHttp", "ToolResult", "ToolSpec"]
