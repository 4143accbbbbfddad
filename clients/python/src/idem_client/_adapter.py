"""What the framework adapters share: which tools, one call, and the text a model reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidArguments, Unavailable
from .http import IdemHttp, ToolSpec

#: The tool that reads an action by id (for approval holds and long calls).
STATUS_TOOL = "idem_status"


def select(client: IdemHttp, cells: Iterable[str] | None) -> list[ToolSpec]:
    """The server's tools for ``cells`` (``stripe.charge`` or ``stripe_charge``; every cell if
    None), and always ``idem_status``, which a model needs to follow up a hold."""
    specs = client.tools()
    if cells is None:
        return specs
    wanted = {c.replace(".", "_") for c in cells}
    known = {s.name for s in specs}
    unknown = sorted(wanted - known)
    if unknown:
        raise InvalidArguments(f"no tool for {unknown}; the server offers {sorted(known)}", "cells")
    return [s for s in specs if s.name in wanted or s.name == STATUS_TOOL]


def render(result: Mapping[str, Any]) -> str:
    """The answer as the model sees it: compact JSON, non-ASCII kept readable."""
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)


def call(
    client: IdemHttp, spec: ToolSpec, arguments: Mapping[str, Any], scope: str, wait_seconds: int
) -> tuple[bool, str]:
    """(is_error, text for the model). An unreachable idem is an answer too: calling again
    with the same intent is safe, and the model is told so."""
    try:
        r = client.call_tool(spec.name, arguments, scope=scope, wait_seconds=wait_seconds)
    except Unavailable as e:
        return True, render(
            {
                "error": "unavailable",
                "message": f"{e}. Calling this tool again with the same intent is safe: "
                "it cannot act twice.",
            }
        )
    return r.is_error, render(r.result)


def no_scope(where: str) -> InvalidArguments:
    return InvalidArguments(
        f"idem needs a scope for this tool call (where intents are unique): {where}", "scope"
    )
