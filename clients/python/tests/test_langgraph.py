"""LangGraph tools from ``idem_client.langgraph``, driven the way a graph drives them: a
``ToolNode`` given the model's tool calls, under a thread's config. No LLM; the effects are
counted in the Stripe simulator's ledger."""

import asyncio
import json
import threading
import time

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from idem_client import IdemHttp, InvalidArguments
from idem_client.langgraph import idem_tools

ARGS = {
    "amount": 60_00,
    "currency": "usd",
    "customer": "cus_lg",
    "description": None,
    "payment_method": None,
}


@pytest.fixture
def node(stack):
    # The idem-specific code a LangGraph app needs (2 lines, counted in the issue note):
    client = IdemHttp(stack.api, stack.agent_token)
    tools = idem_tools(client, cells=["stripe.charge"])
    yield graph_of(tools)
    client.close()


def graph_of(tools):
    """The smallest graph that runs tools: the model's message in, the ToolNode, out."""
    g = StateGraph(MessagesState)
    g.add_node("tools", ToolNode(tools))
    g.add_edge(START, "tools")
    g.add_edge("tools", END)
    compiled = g.compile()
    compiled.tools_by_name = {t.name: t for t in tools}  # for the schema test
    return compiled


def call(node, thread, tool_call_id, args, name="stripe_charge"):
    msg = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": tool_call_id}])
    out = node.invoke({"messages": [msg]}, config={"configurable": {"thread_id": thread}})
    m = out["messages"][-1]
    assert isinstance(m, ToolMessage)
    return m, json.loads(m.content)


def test_the_tools_schema_is_what_a_strict_model_accepts(node):
    tool = node.tools_by_name["stripe_charge"]
    schema = tool.tool_call_schema if isinstance(tool.args_schema, dict) else tool.args_schema
    assert "intent" in tool.args
    assert set(node.tools_by_name) == {"stripe_charge", "idem_status"}
    assert schema is not None


def test_replanned_under_a_new_tool_call_id_is_one_effect(stack, node, scope):
    args = {**ARGS, "intent": "pay invoice 42"}
    m1, first = call(node, scope, "call_1", args)
    m2, second = call(node, scope, "call_2", args)
    assert m2.status == "success"
    assert m1.status == "success" and first["state"] == "succeeded", first
    assert second["action_id"] == first["action_id"]
    assert second["repeated_call"] is True
    assert len(stack.effects(first["action_id"])) == 1


def test_same_intent_other_arguments_is_a_conflict_the_model_can_read(stack, node, scope):
    _, first = call(node, scope, "call_1", {**ARGS, "intent": "pay invoice 43"})
    m, refused = call(node, scope, "call_2", {**ARGS, "amount": 61_00, "intent": "pay invoice 43"})
    assert m.status == "error"
    assert refused["error"] == "intent_conflict"
    assert refused["action_id"] == first["action_id"]
    assert "different intent" in refused["message"]
    assert len(stack.effects(first["action_id"])) == 1


def test_retried_after_a_timeout_is_one_effect(stack, node, scope):
    """The graph gives up on a slow call (its own timeout) and runs the step again."""
    stack.script([{"delay": 3000}])
    args = {**ARGS, "intent": "pay invoice 44"}
    msg = AIMessage(content="", tool_calls=[{"name": "stripe_charge", "args": args, "id": "c1"}])
    config = {"configurable": {"thread_id": scope}}

    async def first_try():
        await asyncio.wait_for(node.ainvoke({"messages": [msg]}, config=config), timeout=0.5)

    with pytest.raises(TimeoutError):
        asyncio.run(first_try())
    _, again = call(node, scope, "c1", args)
    assert again["state"] == "succeeded", again
    assert len(stack.effects(again["action_id"])) == 1


def test_an_approval_hold_tells_the_model_to_wait_not_resubmit(stack, node, scope):
    stack.set_policy("stripe.charge", "amount>=50000")
    try:
        m, held = call(node, scope, "c1", {**ARGS, "amount": 600_00, "intent": "annual plan"})
    finally:
        stack.set_policy("stripe.charge", "never")
    assert m.status == "success"
    assert held["state"] == "awaiting_approval"
    assert "do not call the tool again under a new intent" in held["next"]
    assert stack.effects(held["action_id"]) == []
    stack.approve(held["action_id"])
    _, done = call(
        node, scope, "c2", {"action_id": held["action_id"], "wait_seconds": 30}, name="idem_status"
    )
    assert done["state"] == "succeeded", done
    assert len(stack.effects(held["action_id"])) == 1


def test_a_worker_killed_mid_call_still_gives_one_effect(stack, node, scope):
    stack.script([{"delay": 2500}])
    before = stack.requests_seen()
    args = {**ARGS, "intent": "pay invoice 45"}
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=call(node, scope, "c1", args)[1]))
    t.start()
    deadline = time.monotonic() + 20
    while stack.requests_seen() == before:
        assert time.monotonic() < deadline, "the partner call never started"
        time.sleep(0.05)
    stack.kill_worker()  # SIGKILL while the charge is at the partner
    stack.start_worker()
    t.join(timeout=60)
    r = answer["r"]
    if r["state"] != "succeeded":  # the tool's wait ended first: ask as a model would
        _, r = call(
            node, scope, "c2", {"action_id": r["action_id"], "wait_seconds": 45}, name="idem_status"
        )
    assert r["state"] == "succeeded", r
    assert len(stack.effects(r["action_id"])) == 1


def test_without_a_thread_the_tool_refuses_to_guess_a_scope(node):
    msg = AIMessage(
        content="",
        tool_calls=[{"name": "stripe_charge", "args": {**ARGS, "intent": "x"}, "id": "c"}],
    )
    with pytest.raises(InvalidArguments, match="thread_id"):
        node.invoke({"messages": [msg]}, config={})
