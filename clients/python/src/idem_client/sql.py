"""Enqueue on the caller's own PostgreSQL connection, and await a receipt with LISTEN.

``enqueue`` runs ``idem.enqueue_intent`` / ``idem.enqueue`` in whatever transaction the
connection is in, so the action exists exactly when the caller's transaction commits —
the transactional outbox. Inside an open transaction it runs under a savepoint, so a
refused enqueue (a conflict, bad arguments) leaves the caller's other writes usable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, LiteralString

import psycopg
from psycopg import pq
from psycopg.types.json import Jsonb

from .errors import Conflict, IdemError, InvalidArguments, NotFound, Unavailable, Unsettled
from .ids import check_intent_part, intent_id
from .status import ActionStatus, Enqueued

#: The channel an action's id is sent on when it settles.
SETTLED_CHANNEL = "idem_settled"

_STATUS_SQL: LiteralString = (
    "SELECT action_id, cell, state, attempts, reason, receipt, created_at, settled_at "
    "FROM idem.action_status WHERE action_id = %s"
)
_INVALID = {"IDM02", "IDM03", "IDM05", "22P05", "22021"}


def _statement(
    cell: str,
    args: Mapping[str, Any],
    scope: str | None,
    intent: str | None,
    action_id: uuid.UUID | str | None,
    ordering_key: str | None,
) -> tuple[LiteralString, tuple[Any, ...], uuid.UUID]:
    if not isinstance(args, Mapping):
        raise InvalidArguments("args must be a JSON object", "/args")
    if action_id is not None:
        if scope is not None or intent is not None:
            raise InvalidArguments("give action_id or scope + intent, not both", "/action_id")
        try:
            aid = action_id if isinstance(action_id, uuid.UUID) else uuid.UUID(action_id)
        except ValueError as e:
            raise InvalidArguments(f"action_id: {e}", "/action_id") from e
        sql: LiteralString = "SELECT action_id, state, created FROM idem.enqueue(%s, %s, %s, %s)"
        return sql, (aid, cell, Jsonb(dict(args)), ordering_key), aid
    if scope is None or intent is None:
        raise InvalidArguments(
            "scope + intent (or action_id) is required: a retried call must name the same action",
            "/intent" if scope is not None else "/intent_scope",
        )
    for field, value in (("intent_scope", scope), ("intent", intent)):
        try:
            check_intent_part(field, value)
        except ValueError as e:
            raise InvalidArguments(str(e), f"/{field}") from e
    sql = "SELECT action_id, state, created FROM idem.enqueue_intent(%s, %s, %s, %s, %s)"
    return sql, (scope, intent, cell, Jsonb(dict(args)), ordering_key), intent_id(scope, intent)


def _translate(e: psycopg.Error, aid: uuid.UUID) -> IdemError | None:
    """The caller-facing error for a database error, or None to let it through."""
    state = e.sqlstate
    if state == "IDM01":
        return Conflict(e.diag.message_primary or str(e), aid)
    if state in _INVALID:
        field = e.diag.message_detail if state == "IDM05" else None
        column = e.diag.column_name
        if field is None and column:
            field = f"/{column}"
        return InvalidArguments(e.diag.message_primary or str(e), field)
    if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
        return Unavailable(f"PostgreSQL unavailable: {e}")
    return None


def enqueue(
    conn: psycopg.Connection[Any],
    cell: str,
    args: Mapping[str, Any],
    *,
    scope: str | None = None,
    intent: str | None = None,
    action_id: uuid.UUID | str | None = None,
    ordering_key: str | None = None,
) -> Enqueued:
    """Enqueue ``cell(args)`` named by ``scope`` + ``intent`` (or ``action_id``) in the
    connection's current transaction. Raises :class:`Conflict`, :class:`InvalidArguments`,
    :class:`Unavailable`."""
    sql, params, aid = _statement(cell, args, scope, intent, action_id, ordering_key)
    try:
        if conn.info.transaction_status == pq.TransactionStatus.INTRANS:
            with conn.transaction():
                row = conn.execute(sql, params).fetchone()
        else:
            row = conn.execute(sql, params).fetchone()
    except psycopg.Error as e:
        err = _translate(e, aid)
        if err is None:
            raise
        raise err from e
    assert row is not None
    return Enqueued(uuid.UUID(str(row[0])), row[1], bool(row[2]))


async def enqueue_async(
    conn: psycopg.AsyncConnection[Any],
    cell: str,
    args: Mapping[str, Any],
    *,
    scope: str | None = None,
    intent: str | None = None,
    action_id: uuid.UUID | str | None = None,
    ordering_key: str | None = None,
) -> Enqueued:
    """:func:`enqueue` on an ``AsyncConnection``."""
    sql, params, aid = _statement(cell, args, scope, intent, action_id, ordering_key)
    try:
        if conn.info.transaction_status == pq.TransactionStatus.INTRANS:
            async with conn.transaction():
                cur = await conn.execute(sql, params)
        else:
            cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    except psycopg.Error as e:
        err = _translate(e, aid)
        if err is None:
            raise
        raise err from e
    assert row is not None
    return Enqueued(uuid.UUID(str(row[0])), row[1], bool(row[2]))


def _status(row: tuple[Any, ...] | None, aid: uuid.UUID) -> ActionStatus:
    if row is None:
        raise NotFound(aid)
    return ActionStatus(
        action_id=uuid.UUID(str(row[0])),
        cell=row[1],
        state=row[2],
        attempts=int(row[3]),
        reason=row[4],
        receipt=row[5],
        created_at=row[6],
        settled_at=row[7],
    )


def _as_id(action_id: uuid.UUID | str) -> uuid.UUID:
    return action_id if isinstance(action_id, uuid.UUID) else uuid.UUID(action_id)


def status(conn: psycopg.Connection[Any], action_id: uuid.UUID | str) -> ActionStatus:
    """The action as it stands now."""
    aid = _as_id(action_id)
    return _status(conn.execute(_STATUS_SQL, (aid,)).fetchone(), aid)


def _listening(conn: psycopg.Connection[Any]) -> None:
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise IdemError(
            "await_receipt needs a connection outside a transaction: LISTEN takes effect "
            "at commit, so commit first (or pass a URL)"
        )
    conn.execute("LISTEN " + SETTLED_CHANNEL)
    if not conn.autocommit:
        conn.commit()


def await_receipt(
    conn_or_url: psycopg.Connection[Any] | str,
    action_id: uuid.UUID | str,
    timeout: float,
) -> ActionStatus:
    """Wait up to ``timeout`` seconds for the action to settle, woken by ``NOTIFY
    idem_settled`` (no polling). Returns the settled status (``succeeded``, ``failed``,
    ``rejected``, ``needs_human``, ``dead``: branch on ``state``); raises
    :class:`Unsettled` if it is still open, :class:`NotFound` if there is no such action."""
    aid = _as_id(action_id)
    try:
        if isinstance(conn_or_url, str):
            with psycopg.connect(conn_or_url, autocommit=True) as conn:
                return _await(conn, aid, timeout)
        return _await(conn_or_url, aid, timeout)
    except psycopg.OperationalError as e:
        raise Unavailable(f"PostgreSQL unavailable: {e}") from e


def _await(conn: psycopg.Connection[Any], aid: uuid.UUID, timeout: float) -> ActionStatus:
    _listening(conn)
    try:
        # Listening before the first read: a settle between the two is not missed.
        s = status(conn, aid)
        if not conn.autocommit:
            conn.commit()
        deadline = time.monotonic() + timeout
        want = str(aid)
        while not s.settled:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unsettled(aid, s.state)
            woke = any(n.payload == want for n in conn.notifies(timeout=remaining, stop_after=1))
            if woke or time.monotonic() >= deadline:
                s = status(conn, aid)
                if not conn.autocommit:
                    conn.commit()
        return s
    finally:
        conn.execute("UNLISTEN " + SETTLED_CHANNEL)
        if not conn.autocommit:
            conn.commit()


async def status_async(
    conn: psycopg.AsyncConnection[Any], action_id: uuid.UUID | str
) -> ActionStatus:
    """:func:`status` on an ``AsyncConnection``."""
    aid = _as_id(action_id)
    cur = await conn.execute(_STATUS_SQL, (aid,))
    return _status(await cur.fetchone(), aid)


async def await_receipt_async(
    conn_or_url: psycopg.AsyncConnection[Any] | str,
    action_id: uuid.UUID | str,
    timeout: float,
) -> ActionStatus:
    """:func:`await_receipt` on an ``AsyncConnection`` (or a URL)."""
    aid = _as_id(action_id)
    try:
        if isinstance(conn_or_url, str):
            async with await psycopg.AsyncConnection.connect(conn_or_url, autocommit=True) as c:
                return await _await_async(c, aid, timeout)
        return await _await_async(conn_or_url, aid, timeout)
    except psycopg.OperationalError as e:
        raise Unavailable(f"PostgreSQL unavailable: {e}") from e


async def _await_async(
    conn: psycopg.AsyncConnection[Any], aid: uuid.UUID, timeout: float
) -> ActionStatus:
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise IdemError(
            "await_receipt needs a connection outside a transaction: LISTEN takes effect "
            "at commit, so commit first (or pass a URL)"
        )
    await conn.execute("LISTEN " + SETTLED_CHANNEL)
    if not conn.autocommit:
        await conn.commit()
    try:
        s = await status_async(conn, aid)
        if not conn.autocommit:
            await conn.commit()
        deadline = time.monotonic() + timeout
        want = str(aid)
        while not s.settled:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unsettled(aid, s.state)
            woke = False
            async for n in conn.notifies(timeout=remaining, stop_after=1):
                woke = n.payload == want
            if woke or time.monotonic() >= deadline:
                s = await status_async(conn, aid)
                if not conn.autocommit:
                    await conn.commit()
        return s
    finally:
        await conn.execute("UNLISTEN " + SETTLED_CHANNEL)
        if not conn.autocommit:
            await conn.commit()
