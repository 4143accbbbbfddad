"""One (scope, intent) sent through every surface idem has — HTTP ``POST /v1/actions``,
SQL ``idem.enqueue_intent``, the CLI, MCP over streamable HTTP (query and header), MCP over
stdio, the Python client (SQL and HTTP, ``submit`` and ``call_tool``) and the TypeScript
client (``examples/surface.ts``) — names one action and causes one charge in the Stripe
simulator's ledger, and the same intent with another amount is a conflict on each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from conftest import REPO, Stack
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from idem_client import Conflict, IdemHttp, enqueue, intent_id

# The pair from issue 39: a space, non-ASCII letters, a dash, a euro sign and a check mark.
SCOPE = "conversation-7 Zürich"
INTENT = "pay invoice 42 — €42.00 ✓"
# An amount no other test charges, so the ledger can be searched for it; the TypeScript
# example's other amount is this one plus one, as OTHER's.
ARGS: dict[str, Any] = {"amount": 4217, "currency": "eur", "customer": "cus_surfaces"}
OTHER: dict[str, Any] = {**ARGS, "amount": 4218}


def _mcp_result(r: CallToolResult) -> dict[str, Any]:
    assert r.structuredContent is not None, r
    return dict(r.structuredContent)


async def _two_calls(session: ClientSession) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same intent with the same and with another amount, over one MCP session."""
    await session.initialize()
    same = _mcp_result(await session.call_tool("stripe_charge", {**ARGS, "intent": INTENT}))
    other = _mcp_result(await session.call_tool("stripe_charge", {**OTHER, "intent": INTENT}))
    return same, other


async def _mcp_http(stack: Stack, query: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    headers: dict[str, str | bytes] = {"authorization": f"Bearer {stack.agent_token}"}
    url = f"{stack.api}/mcp"
    if query:
        url += f"?session={quote(SCOPE, safe='')}"
    else:
        headers["idem-session"] = SCOPE.encode()  # UTF-8 as sent, no encoding of idem's
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=60)) as http,
        streamable_http_client(url, http_client=http) as (r, w, _),
        ClientSession(r, w) as s,
    ):
        return await _two_calls(s)


async def _mcp_stdio(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    params = StdioServerParameters(
        command=stack.bin,
        args=["mcp", "--session", SCOPE, "--stripe-base", stack.stripe],
        env={**os.environ, "DATABASE_URL": stack.database_url, "RUST_LOG": "warn"},
    )
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        return await _two_calls(s)


def _cli(stack: Stack, args: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cmd = [stack.bin, "enqueue", "--database-url", stack.database_url, "--cell", "stripe.charge"]
    cmd += ["--intent-scope", SCOPE, "--intent", INTENT, "--args", json.dumps(args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _typescript(stack: Stack) -> dict[str, Any]:
    script = REPO / "clients/typescript/dist/examples/surface.js"
    if not script.is_file():
        pytest.fail(
            f"{script} is missing: build the TypeScript client first "
            "(clients/typescript/run-tests.sh, or npm ci && npm run build there); "
            "./scripts/test.sh does it before these tests",
            pytrace=False,
        )
    env = {
        **os.environ,
        "DATABASE_URL": stack.database_url,
        "IDEM_URL": stack.api,
        "IDEM_TOKEN": stack.agent_token,
        "SCOPE": SCOPE,
        "INTENT": INTENT,
        "ARGS": json.dumps(ARGS),
    }
    out = subprocess.run(
        ["node", str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return parsed


def test_one_scope_and_intent_is_one_action_and_one_charge_on_every_surface(stack: Stack) -> None:
    want = intent_id(SCOPE, INTENT)
    ids: dict[str, uuid.UUID | str] = {"python intent_id": want}
    conflicts: dict[str, str] = {}

    # HTTP first, by hand: it creates the action, and the worker charges it.
    with httpx.Client(
        base_url=stack.api, headers={"authorization": f"Bearer {stack.agent_token}"}, timeout=10
    ) as h:
        body = {"cell": "stripe.charge", "args": ARGS, "intent_scope": SCOPE, "intent": INTENT}
        first = h.post("/v1/actions", json=body)
        assert first.status_code == 201, first.text
        ids["http"] = first.json()["action_id"]
        again = h.post("/v1/actions", json=body)
        assert again.status_code == 200, again.text
        ids["http again"] = again.json()["action_id"]
        other = h.post("/v1/actions", json={**body, "args": OTHER})
        assert other.status_code == 409, other.text
        conflicts["http"] = other.json()["action_id"]
    with IdemHttp(stack.api, stack.agent_token) as idem:
        assert idem.await_receipt(want, timeout=30).succeeded

        # The Python client over HTTP: submit and the framework adapters' tool call.
        s = idem.submit("stripe.charge", ARGS, scope=SCOPE, intent=INTENT)
        assert not s.created
        ids["python submit"] = s.action_id
        with pytest.raises(Conflict) as c:
            idem.submit("stripe.charge", OTHER, scope=SCOPE, intent=INTENT)
        conflicts["python submit"] = str(c.value.action_id)
        t = idem.call_tool("stripe_charge", {**ARGS, "intent": INTENT}, scope=SCOPE)
        assert not t.is_error and t.result["state"] == "succeeded", t
        ids["python call_tool"] = t.result["action_id"]
        t = idem.call_tool("stripe_charge", {**OTHER, "intent": INTENT}, scope=SCOPE)
        assert t.is_error and t.result["error"] == "intent_conflict", t
        conflicts["python call_tool"] = t.result["action_id"]

    # SQL: idem's own functions, then the Python client's enqueue on the caller's connection.
    with psycopg.connect(stack.database_url, autocommit=True) as c:
        row = c.execute("SELECT idem.intent_id(%s, %s)", (SCOPE, INTENT)).fetchone()
        assert row is not None
        ids["sql intent_id"] = row[0]
        row = c.execute(
            "SELECT action_id, created FROM idem.enqueue_intent(%s, %s, 'stripe.charge', %s)",
            (SCOPE, INTENT, json.dumps(ARGS)),
        ).fetchone()
        assert row is not None and row[1] is False, row
        ids["sql enqueue_intent"] = row[0]
        with pytest.raises(psycopg.Error) as e:
            c.execute(
                "SELECT * FROM idem.enqueue_intent(%s, %s, 'stripe.charge', %s)",
                (SCOPE, INTENT, json.dumps(OTHER)),
            )
        assert e.value.sqlstate == "IDM01", e.value
        conflicts["sql enqueue_intent"] = (
            str(want) if str(want) in str(e.value.diag.message_detail) else str(e.value)
        )
        p = enqueue(c, "stripe.charge", ARGS, scope=SCOPE, intent=INTENT)
        assert not p.created
        ids["python enqueue"] = p.action_id
        with pytest.raises(Conflict) as cc:
            enqueue(c, "stripe.charge", OTHER, scope=SCOPE, intent=INTENT)
        conflicts["python enqueue"] = str(cc.value.action_id)

    # The CLI: the existing action as JSON; another amount is exit code 3.
    out = _cli(stack, ARGS)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    ids["cli"] = cli["action_id"]
    out = _cli(stack, OTHER)
    assert out.returncode == 3, (out.returncode, out.stderr)
    conflicts["cli"] = str(want) if str(want) in out.stderr else out.stderr

    # MCP: over HTTP with ?session= and with the Idem-Session header, and over stdio.
    for name, run in [
        ("mcp http ?session=", _mcp_http(stack, query=True)),
        ("mcp http Idem-Session", _mcp_http(stack, query=False)),
        ("mcp stdio --session", _mcp_stdio(stack)),
    ]:
        same, other_call = asyncio.run(run)
        assert same.get("state") == "succeeded", (name, same)
        ids[name] = same["action_id"]
        assert other_call.get("error") == "intent_conflict", (name, other_call)
        conflicts[name] = other_call["action_id"]

    # TypeScript: intentId, enqueue, IdemHttp.submit and callTool.
    ts = _typescript(stack)
    ids["ts intentId"] = ts["intentId"]
    ids["ts enqueue"] = ts["enqueue"]["actionId"]
    ids["ts submit"] = ts["submit"]["actionId"]
    ids["ts callTool"] = ts["tool"]["actionId"]
    assert ts["tool"]["state"] == "succeeded" and not ts["tool"]["isError"], ts
    assert not ts["enqueue"]["created"] and not ts["submit"]["created"], ts
    conflicts["ts enqueue"] = ts["enqueueOther"].removeprefix("conflict ")
    conflicts["ts submit"] = ts["submitOther"].removeprefix("conflict ")
    assert ts["toolOther"]["error"] == "intent_conflict", ts
    conflicts["ts callTool"] = ts["toolOther"]["actionId"]

    named = {k: str(v) for k, v in ids.items()}
    assert set(named.values()) == {str(want)}, json.dumps(named, indent=1, ensure_ascii=False)
    assert set(conflicts.values()) == {str(want)}, json.dumps(
        conflicts, indent=1, ensure_ascii=False
    )
    assert len(ids) == 16 and len(conflicts) == 12, (ids.keys(), conflicts.keys())

    # One action holds the pair, and the partner was charged once.
    with psycopg.connect(stack.database_url) as c:
        row = c.execute(
            "SELECT count(*) FROM idem.actions WHERE intent_scope = %s", (SCOPE,)
        ).fetchone()
        assert row == (1,), row
    assert len(stack.effects(want)) == 1
    charged = [
        e
        for e in httpx.get(f"{stack.stripe}/_sim/ledger", timeout=5).json()["effects"]
        if e.get("amount") in (ARGS["amount"], OTHER["amount"])
    ]
    assert len(charged) == 1, charged
