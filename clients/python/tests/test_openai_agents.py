"""OpenAI Agents SDK tools from ``idem_client.openai_agents``, run by the SDK's own Runner
with a scripted model (no LLM): the SDK parses the calls, applies its tool timeout and hands
the outputs back, exactly as with a real model."""

import asyncio
import json
from typing import Any

from agents import Agent, RunConfig, Runner
from agents.items import ModelResponse, ToolCallOutputItem
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from idem_client import IdemHttp
from idem_client.openai_agents import idem_tools

ARGS = {
    "amount": 25_00,
    "currency": "usd",
    "customer": "cus_oa",
    "description": None,
    "payment_method": None,
}


class ScriptedModel(Model):
    """Answers each turn with the next scripted tool calls, then a final message."""

    def __init__(self, turns: list[list[tuple[str, str, dict[str, Any]]]]) -> None:
        self.turns = list(turns)

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        if self.turns:
            calls = self.turns.pop(0)
            out: list[Any] = [
                ResponseFunctionToolCall(
                    id=f"fc_{cid}",
                    call_id=cid,
                    name=name,
                    arguments=json.dumps(a),
                    type="function_call",
                )
                for cid, name, a in calls
            ]
        else:
            out = [
                ResponseOutputMessage(
                    id="msg",
                    role="assistant",
                    status="completed",
                    type="message",
                    content=[ResponseOutputText(text="done", type="output_text", annotations=[])],
                )
            ]
        return ModelResponse(output=out, usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def run(stack, scope, turns, *, timeout_seconds=None):
    client = IdemHttp(stack.api, stack.agent_token)
    # The idem-specific code an Agents SDK app needs (2 lines, counted in the issue note):
    tools = idem_tools(client, cells=["stripe.charge"])
    if timeout_seconds is not None:
        for t in tools:
            t.timeout_seconds = timeout_seconds
    agent = Agent(name="billing", tools=tools, model=ScriptedModel(turns))
    result = asyncio.run(
        Runner.run(
            agent,
            "charge the customer",
            run_config=RunConfig(group_id=scope, tracing_disabled=True),
        )
    )
    client.close()
    outputs = [i.output for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    return [json.loads(o) if o.startswith("{") else o for o in outputs]


def test_strict_schema_and_the_status_tool(stack):
    with IdemHttp(stack.api, stack.agent_token) as client:
        tools = {t.name: t for t in idem_tools(client, cells=["stripe.charge"])}
    assert set(tools) == {"stripe_charge", "idem_status"}
    assert tools["stripe_charge"].strict_json_schema
    assert "intent" in tools["stripe_charge"].params_json_schema["required"]


def test_replanned_call_and_conflict_in_one_run(stack, scope):
    pay = {**ARGS, "intent": "pay order 9"}
    outs = run(
        stack,
        scope,
        [
            [("call_a", "stripe_charge", pay)],
            [("call_b", "stripe_charge", pay)],  # re-planned, new id
            [("call_c", "stripe_charge", {**pay, "amount": 26_00})],  # same intent, other args
        ],
    )
    first, again, conflict = outs
    assert first["state"] == "succeeded", first
    assert again["action_id"] == first["action_id"] and again["repeated_call"] is True
    assert conflict["error"] == "intent_conflict"
    assert conflict["action_id"] == first["action_id"]
    assert len(stack.effects(first["action_id"])) == 1


def test_a_call_the_sdk_timed_out_and_the_model_retried_is_one_effect(stack, scope):
    """The SDK's own tool timeout cuts the call while the charge is at a slow partner; the
    turn is run again (a retried step) with the same intent."""
    stack.script([{"delay": 3000}])
    pay = {**ARGS, "intent": "pay order 10"}
    (timed_out,) = run(stack, scope, [[("c1", "stripe_charge", pay)]], timeout_seconds=1)
    assert isinstance(timed_out, str) and "timed out" in timed_out.lower(), timed_out
    (retried,) = run(stack, scope, [[("c2", "stripe_charge", pay)]])
    assert retried["state"] == "succeeded", retried
    assert len(stack.effects(retried["action_id"])) == 1


def test_an_approval_hold_is_reported_and_followed_up(stack, scope):
    stack.set_policy("stripe.charge", "amount>=50000")
    try:
        (held,) = run(
            stack,
            scope,
            [[("c1", "stripe_charge", {**ARGS, "amount": 900_00, "intent": "big one"})]],
        )
    finally:
        stack.set_policy("stripe.charge", "never")
    assert held["state"] == "awaiting_approval"
    assert stack.effects(held["action_id"]) == []
    stack.approve(held["action_id"])
    (done,) = run(
        stack,
        scope,
        [[("c2", "idem_status", {"action_id": held["action_id"], "wait_seconds": 30})]],
    )
    assert done["state"] == "succeeded"
    assert len(stack.effects(held["action_id"])) == 1


def test_the_scope_is_the_runs_group_id(stack, scope):
    pay = {**ARGS, "intent": "pay order 11"}
    (a,) = run(stack, scope, [[("c1", "stripe_charge", pay)]])
    (b,) = run(stack, scope + "-other-thread", [[("c1", "stripe_charge", pay)]])
    assert a["action_id"] != b["action_id"]  # another conversation, another action
