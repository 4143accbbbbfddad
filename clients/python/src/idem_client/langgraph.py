"""idem's cells as LangGraph / LangChain tools.

    from idem_client import IdemHttp
    from idem_client.langgraph import idem_tools
    tools = idem_tools(IdemHttp(url, token), cells=["stripe.charge"])
    graph = ... ToolNode(tools) ...   # run with config={"configurable": {"thread_id": ...}}

The scope is the graph's ``thread_id`` (or ``scope(config)``); the intent comes from the
model's call, so a retried step, a re-planned call under a new tool-call id and a replay
after a crash all name one action. A refusal (conflict, bad arguments, the action did not
happen) comes back as a tool error message the model can read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, ToolException

from . import _adapter
from .http import IdemHttp, ToolSpec

Scope = Callable[[RunnableConfig], str]


def thread_scope(config: RunnableConfig) -> str:
    """The scope of a LangGraph run: its checkpointer ``thread_id``."""
    thread = (config.get("configurable") or {}).get("thread_id")
    if not thread:
        raise _adapter.no_scope(
            "run the graph with config={'configurable': {'thread_id': ...}} or pass scope="
        )
    return str(thread)


def _tool(client: IdemHttp, spec: ToolSpec, scope: Scope, wait_seconds: int) -> BaseTool:
    def run(config: RunnableConfig, **arguments: Any) -> str:
        s = scope(config) if spec.name != _adapter.STATUS_TOOL else "-"
        is_error, text = _adapter.call(client, spec, arguments, s, wait_seconds)
        if is_error:
            raise ToolException(text)
        return text

    return StructuredTool.from_function(
        func=run,
        name=spec.name,
        description=spec.description,
        args_schema=spec.input_schema,
        infer_schema=False,
        handle_tool_error=True,
    )


def idem_tools(
    client: IdemHttp,
    *,
    cells: Iterable[str] | None = None,
    scope: Scope = thread_scope,
    wait_seconds: int = 20,
) -> list[BaseTool]:
    """A tool per cell (all the server offers, or ``cells``) plus ``idem_status``."""
    return [_tool(client, s, scope, wait_seconds) for s in _adapter.select(client, cells)]


__all__ = ["idem_tools", "thread_scope"]
