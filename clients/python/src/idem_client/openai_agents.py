"""idem's cells as OpenAI Agents SDK tools.

    from idem_client import IdemHttp
    from idem_client.openai_agents import idem_tools
    agent = Agent(name="billing", tools=idem_tools(IdemHttp(url, token)))
    await Runner.run(agent, prompt, run_config=RunConfig(group_id=conversation_id))

The scope is the run's ``group_id`` (the SDK's "chat thread id"), or the run context's
``idem_scope`` attribute or key, or ``scope(ctx)``; the intent comes from the model's call.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterable
from typing import Any

from agents import FunctionTool
from agents.strict_schema import ensure_strict_json_schema
from agents.tool_context import ToolContext

from . import _adapter
from .http import IdemHttp, ToolSpec

Scope = Callable[[ToolContext[Any]], str]


def run_scope(ctx: ToolContext[Any]) -> str:
    """The run's scope: ``context.idem_scope`` (attribute or key), else ``group_id``."""
    c = ctx.context
    given = c.get("idem_scope") if isinstance(c, dict) else getattr(c, "idem_scope", None)
    if given:
        return str(given)
    group = ctx.run_config.group_id if ctx.run_config is not None else None
    if group:
        return str(group)
    raise _adapter.no_scope(
        "run with RunConfig(group_id=<conversation id>), or a context with idem_scope, "
        "or pass scope="
    )


def _strict(schema: dict[str, Any]) -> bool:
    try:
        ensure_strict_json_schema(copy.deepcopy(schema))
    except Exception:  # the SDK refuses in several ways; then not strict
        return False
    return True


def _tool(client: IdemHttp, spec: ToolSpec, scope: Scope, wait_seconds: int) -> FunctionTool:
    async def invoke(ctx: ToolContext[Any], raw: str) -> str:
        arguments = json.loads(raw) if raw else {}
        s = scope(ctx) if spec.name != _adapter.STATUS_TOOL else "-"
        _, text = await asyncio.to_thread(_adapter.call, client, spec, arguments, s, wait_seconds)
        return text

    return FunctionTool(
        name=spec.name,
        description=spec.description,
        params_json_schema=spec.input_schema,
        on_invoke_tool=invoke,
        strict_json_schema=_strict(spec.input_schema),
    )


def idem_tools(
    client: IdemHttp,
    *,
    cells: Iterable[str] | None = None,
    scope: Scope = run_scope,
    wait_seconds: int = 20,
) -> list[FunctionTool]:
    """A tool per cell (all the server offers, or ``cells``) plus ``idem_status``."""
    return [_tool(client, s, scope, wait_seconds) for s in _adapter.select(client, cells)]


__all__ = ["idem_tools", "run_scope"]
