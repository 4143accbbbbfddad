"""The HTTP client against ``idem serve``: the same names, errors and receipts."""

import asyncio
import uuid

import pytest

from idem_client import (
    AsyncIdemHttp,
    Conflict,
    IdemHttp,
    InvalidArguments,
    NotFound,
    Unauthorized,
    Unavailable,
    Unsettled,
    intent_id,
)

CHARGE = {"amount": 1500, "currency": "eur", "customer": "cus_http"}


def test_submit_twice_is_one_action_and_one_effect(stack, scope):
    with IdemHttp(stack.api, stack.agent_token) as idem:
        a = idem.submit("stripe.charge", CHARGE, scope=scope, intent="order 7")
        b = idem.submit("stripe.charge", CHARGE, scope=scope, intent="order 7")
        assert (a.created, b.created) == (True, False)
        assert a.action_id == b.action_id == intent_id(scope, "order 7")
        with pytest.raises(Conflict) as c:
            idem.submit("stripe.charge", {**CHARGE, "amount": 1}, scope=scope, intent="order 7")
        assert c.value.action_id == a.action_id
        done = idem.await_receipt(a.action_id, timeout=30)
        assert done.succeeded and done.receipt
    assert len(stack.effects(a.action_id)) == 1


def test_refusals_name_the_field(stack, scope):
    with IdemHttp(stack.api, stack.agent_token) as idem:
        with pytest.raises(InvalidArguments) as e:
            idem.submit("stripe.charge", {**CHARGE, "currency": "EURO"}, scope=scope, intent="x")
        assert e.value.field == "/args/currency"
        with pytest.raises(InvalidArguments) as e:
            idem.submit("stripe.charge", CHARGE, scope=scope)
        assert e.value.field == "/intent"
        with pytest.raises(NotFound):
            idem.status(uuid.uuid4())


def test_long_poll_wait_and_unsettled(stack, scope):
    stack.script([{"delay": 3000}])
    with IdemHttp(stack.api, stack.agent_token) as idem:
        a = idem.submit("stripe.charge", CHARGE, scope=scope, intent="slow http")
        with pytest.raises(Unsettled):
            idem.await_receipt(a.action_id, timeout=0.5)
        assert idem.await_receipt(a.action_id, timeout=30).succeeded


def test_tokens_are_checked_and_never_shown(stack):
    with IdemHttp(stack.api, "idem_not_a_token") as idem:
        with pytest.raises(Unauthorized):
            idem.tools()
    secret = stack.agent_token
    assert secret not in repr(IdemHttp(stack.api, secret))


def test_an_unreachable_server_is_unavailable():
    with IdemHttp("http://127.0.0.1:9", "t", timeout=1) as idem, pytest.raises(Unavailable):
        idem.submit("stripe.charge", CHARGE, scope="s", intent="i")


def test_async_client(stack, scope):
    async def run():
        async with AsyncIdemHttp(stack.api, stack.agent_token) as idem:
            a = await idem.submit("stripe.charge", CHARGE, scope=scope, intent="async http")
            return await idem.await_receipt(a.action_id, timeout=30)

    assert asyncio.run(run()).succeeded
