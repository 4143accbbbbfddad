"""Enqueue on the caller's own connection and await with LISTEN, against real PostgreSQL,
a real worker and the Stripe simulator's ledger."""

import asyncio
import json
import threading

import psycopg
import pytest
from conftest import REPO

from idem_client import (
    Conflict,
    IdemError,
    InvalidArguments,
    NotFound,
    Unsettled,
    await_receipt,
    await_receipt_async,
    enqueue,
    enqueue_async,
    intent_id,
    status,
)

CHARGE = {"amount": 4200, "currency": "usd", "customer": "cus_py"}


def test_sql_intent_id_matches_python_for_every_vector(stack):
    vectors = json.loads((REPO / "testdata/intent_ids.json").read_text())["intent_ids"]["vectors"]
    with psycopg.connect(stack.database_url) as c:
        for v in vectors:
            row = c.execute("SELECT idem.intent_id(%s, %s)", (v["scope"], v["intent"])).fetchone()
            assert row is not None
            assert row[0] == intent_id(v["scope"], v["intent"]), v["note"]


def test_the_action_exists_exactly_when_the_callers_transaction_commits(stack, scope):
    with (
        psycopg.connect(stack.database_url) as app,
        psycopg.connect(stack.database_url, autocommit=True) as other,
    ):
        # Rolled back with the application's own writes: no action, no effect.
        with app.transaction():
            app.execute("CREATE TEMP TABLE IF NOT EXISTS invoices (id text)")
            e = enqueue(app, "stripe.charge", CHARGE, scope=scope, intent="rolled back")
            assert e.created
            raise psycopg.Rollback()
        with pytest.raises(NotFound):
            status(other, e.action_id)

        with app.transaction():
            app.execute("CREATE TEMP TABLE IF NOT EXISTS invoices (id text)")
            app.execute("INSERT INTO invoices VALUES ('inv-42')")
            e = enqueue(app, "stripe.charge", CHARGE, scope=scope, intent="invoice-42")
            assert e.action_id == intent_id(scope, "invoice-42")
            with pytest.raises(NotFound):
                status(other, e.action_id)  # not committed yet: invisible
        assert status(other, e.action_id).cell == "stripe.charge"

        done = await_receipt(stack.database_url, e.action_id, timeout=30)
        assert done.state == "succeeded", done
        assert done.receipt is not None
        assert len(stack.effects(e.action_id)) == 1


def test_same_intent_is_the_same_action_and_other_arguments_a_conflict(stack, scope):
    with psycopg.connect(stack.database_url, autocommit=True) as c:
        first = enqueue(c, "stripe.charge", CHARGE, scope=scope, intent="pay")
        again = enqueue(c, "stripe.charge", CHARGE, scope=scope, intent="pay")
        assert (first.created, again.created) == (True, False)
        assert again.action_id == first.action_id
        with pytest.raises(Conflict) as err:
            enqueue(c, "stripe.charge", {**CHARGE, "amount": 4300}, scope=scope, intent="pay")
        assert err.value.action_id == first.action_id
        assert await_receipt(c, first.action_id, timeout=30).succeeded
    assert len(stack.effects(first.action_id)) == 1


def test_a_refused_enqueue_leaves_the_callers_transaction_usable(stack, scope):
    with psycopg.connect(stack.database_url) as c:
        with c.transaction():
            enqueue(c, "stripe.charge", CHARGE, scope=scope, intent="kept")
            with pytest.raises(InvalidArguments) as bad:
                enqueue(c, "stripe.charge", {**CHARGE, "amount": "lots"}, scope=scope, intent="x")
            assert bad.value.field == "/args/amount"
            with pytest.raises(InvalidArguments) as unknown:
                enqueue(c, "stripe.teleport", CHARGE, scope=scope, intent="y")
            assert unknown.value.field == "/cell"
            # Still in the same transaction: the first action commits with it.
            c.execute("SELECT 1")
        assert status(c, intent_id(scope, "kept")).cell == "stripe.charge"


def test_names_are_checked_before_the_database(stack, scope):
    with psycopg.connect(stack.database_url, autocommit=True) as c:
        with pytest.raises(InvalidArguments) as e:
            enqueue(c, "stripe.charge", CHARGE, scope=scope, intent="")
        assert e.value.field == "/intent"
        with pytest.raises(InvalidArguments) as e:
            enqueue(c, "stripe.charge", CHARGE, scope=scope)
        assert e.value.field == "/intent"


def test_await_receipt_raises_unsettled_and_a_later_wait_gets_the_receipt(stack, scope):
    stack.script([{"delay": 3000}])
    with psycopg.connect(stack.database_url, autocommit=True) as c:
        e = enqueue(c, "stripe.charge", CHARGE, scope=scope, intent="slow")
        with pytest.raises(Unsettled) as u:
            await_receipt(c, e.action_id, timeout=0.5)
        assert u.value.action_id == e.action_id
        assert await_receipt(c, e.action_id, timeout=30).succeeded
    assert len(stack.effects(e.action_id)) == 1


def test_await_receipt_refuses_a_connection_inside_a_transaction(stack, scope):
    with psycopg.connect(stack.database_url) as c:
        c.execute("SELECT 1")
        with pytest.raises(IdemError, match="outside a transaction"):
            await_receipt(c, intent_id(scope, "x"), timeout=1)


def test_await_receipt_is_woken_by_notify_not_a_poll(stack, scope):
    """The receipt arrives well before the wait would end, on the connection's NOTIFY."""
    with psycopg.connect(stack.database_url, autocommit=True) as c:
        e = enqueue(c, "stripe.charge", CHARGE, scope=scope, intent="notify")
        got = {}
        t = threading.Thread(target=lambda: got.update(s=await_receipt(c, e.action_id, 60)))
        t.start()
        t.join(timeout=30)
        assert not t.is_alive(), "await_receipt did not return within 30 s of a 60 s wait"
        assert got["s"].succeeded


def test_async_enqueue_and_await(stack, scope):
    async def run():
        async with await psycopg.AsyncConnection.connect(stack.database_url) as c:
            async with c.transaction():
                e = await enqueue_async(c, "stripe.charge", CHARGE, scope=scope, intent="async")
            with pytest.raises(Conflict):
                await enqueue_async(
                    c, "stripe.charge", {**CHARGE, "amount": 1}, scope=scope, intent="async"
                )
            await c.rollback()
            return await await_receipt_async(c, e.action_id, timeout=30)

    s = asyncio.run(run())
    assert s.succeeded
    assert len(stack.effects(s.action_id)) == 1
