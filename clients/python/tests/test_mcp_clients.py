"""The MCP client configurations in docs/mcp-clients.md, each started by its client package
against ``idem mcp`` (stdio): the MCP Python SDK with the Claude Desktop-style
``mcpServers`` entry, LangChain's MCP adapters and the OpenAI Agents SDK's
``MCPServerStdio``. Effects counted in the simulator's ledger."""

import asyncio
import json
import re
from typing import Any

from conftest import REPO
from langchain_mcp_adapters.client import MultiServerMCPClient
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ARGS = {
    "amount": 990,
    "currency": "usd",
    "customer": "cus_mcp",
    "description": None,
    "payment_method": None,
}
DOC = (REPO / "docs" / "mcp-clients.md").read_text(encoding="utf-8")


def doc_block(marker: str) -> str:
    """The fenced block after ``<!-- marker -->`` in the doc (what a user copies)."""
    m = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", DOC, re.S)
    assert m, f"docs/mcp-clients.md has no block marked {marker}"
    return m.group(1)


def server_entry(stack, session: str) -> dict[str, Any]:
    """The documented Claude Desktop entry, pointed at this test's idem and simulator."""
    entry = json.loads(doc_block("claude-desktop"))["mcpServers"]["idem"]
    args = [session if a == "conversation-7" else a for a in entry["args"]]
    return {
        "command": stack.bin,
        "args": [*args, "--stripe-base", stack.stripe],
        "env": {**entry.get("env", {}), "DATABASE_URL": stack.database_url},
    }


def test_claude_desktop_entry_with_the_mcp_sdk(stack, scope):
    e = server_entry(stack, scope)

    async def go():
        params = StdioServerParameters(command=e["command"], args=e["args"], env=e["env"])
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            names = [t.name for t in (await s.list_tools()).tools]
            assert "stripe_charge" in names and "idem_status" in names
            a = await s.call_tool("stripe_charge", {**ARGS, "intent": "mcp pay"})
            b = await s.call_tool("stripe_charge", {**ARGS, "intent": "mcp pay"})
            return a.structuredContent, b.structuredContent

    first, again = asyncio.run(go())
    assert first["state"] == "succeeded", first
    assert again["action_id"] == first["action_id"]
    assert len(stack.effects(first["action_id"])) == 1


def test_langchain_mcp_adapters(stack, scope):
    assert "MultiServerMCPClient" in doc_block("langchain-mcp")
    e = server_entry(stack, scope)

    async def go():
        client = MultiServerMCPClient({"idem": {**e, "transport": "stdio"}})
        tools = {t.name: t for t in await client.get_tools()}
        out = await tools["stripe_charge"].ainvoke({**ARGS, "intent": "lc mcp pay"})
        return out

    out = asyncio.run(go())
    text = out if isinstance(out, str) else json.dumps(out, default=str)
    ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", text))
    assert len(ids) == 1, text
    assert "succeeded" in text
    assert len(stack.effects(ids.pop())) == 1


def test_openai_agents_mcp_server_stdio(stack, scope):
    from agents.mcp import MCPServerStdio

    assert "MCPServerStdio" in doc_block("openai-agents-mcp")
    e = server_entry(stack, scope)

    async def go():
        async with MCPServerStdio(
            params={"command": e["command"], "args": e["args"], "env": e["env"]}
        ) as server:
            names = [t.name for t in await server.list_tools()]
            assert "stripe_charge" in names
            r = await server.call_tool("stripe_charge", {**ARGS, "intent": "oa mcp pay"})
            return r.structuredContent

    body = asyncio.run(go())
    assert body["state"] == "succeeded", body
    assert len(stack.effects(body["action_id"])) == 1
