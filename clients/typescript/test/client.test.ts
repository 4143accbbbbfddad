/** enqueue on the caller's own pg client, LISTEN-based awaitReceipt, and the HTTP client,
 * against a real idem; effects counted in the Stripe simulator's ledger. */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import pg from "pg";

import { awaitReceipt, Conflict, enqueue, IdemHttp, intentId, InvalidArguments, NotFound, status, Unauthorized, Unsettled } from "../src/index.js";
import { Stack } from "./stack.js";

const CHARGE = { amount: 4200, currency: "usd", customer: "cus_ts" };
let stack: Stack;
const scope = () => `ts-${crypto.randomUUID()}`;

before(async () => {
  stack = await Stack.start();
});
after(async () => {
  await stack?.stop();
});

test("the action exists exactly when the caller's transaction commits", async () => {
  const s = scope();
  const app = new pg.Client({ connectionString: stack.databaseUrl });
  const other = new pg.Client({ connectionString: stack.databaseUrl });
  await app.connect();
  await other.connect();
  try {
    await app.query("BEGIN");
    const gone = await enqueue(app, "stripe.charge", CHARGE, { scope: s, intent: "rolled back" });
    await app.query("ROLLBACK");
    await assert.rejects(status(other, gone.actionId), NotFound);

    await app.query("BEGIN");
    const e = await enqueue(app, "stripe.charge", CHARGE, { scope: s, intent: "invoice-42" });
    assert.equal(e.actionId, intentId(s, "invoice-42"));
    assert.equal(e.created, true);
    await assert.rejects(status(other, e.actionId), NotFound); // not committed: invisible
    // A refusal inside the transaction does not abort it (savepoint).
    await assert.rejects(enqueue(app, "stripe.charge", { ...CHARGE, amount: 1 }, { scope: s, intent: "invoice-42" }), (err: unknown) => {
      assert.ok(err instanceof Conflict);
      assert.equal(err.actionId, e.actionId);
      return true;
    });
    await assert.rejects(enqueue(app, "stripe.charge", { ...CHARGE, amount: "lots" }, { scope: s, intent: "x" }), (err: unknown) => {
      assert.ok(err instanceof InvalidArguments);
      assert.equal(err.field, "/args/amount");
      return true;
    });
    await app.query("COMMIT");
    assert.equal((await status(other, e.actionId)).cell, "stripe.charge");

    const done = await awaitReceipt(stack.databaseUrl, e.actionId, 30_000);
    assert.equal(done.state, "succeeded");
    assert.ok(done.receipt);
    assert.equal((await stack.effects(e.actionId)).length, 1);
  } finally {
    await app.end();
    await other.end();
  }
});

test("awaitReceipt: Unsettled when the wait ends, the receipt on a later wait", async () => {
  const s = scope();
  await stack.script([{ delay: 3000 }]);
  const c = new pg.Client({ connectionString: stack.databaseUrl });
  await c.connect();
  try {
    const again = await enqueue(c, "stripe.charge", CHARGE, { scope: s, intent: "slow" });
    const same = await enqueue(c, "stripe.charge", CHARGE, { scope: s, intent: "slow" });
    assert.equal(same.created, false);
    assert.equal(same.actionId, again.actionId);
    await assert.rejects(awaitReceipt(c, again.actionId, 500), Unsettled);
    const t0 = Date.now();
    const done = await awaitReceipt(c, again.actionId, 60_000);
    assert.equal(done.state, "succeeded");
    assert.ok(Date.now() - t0 < 30_000, "woken by NOTIFY well before the wait ended");
    assert.equal((await stack.effects(again.actionId)).length, 1);
  } finally {
    await c.end();
  }
});

test("HTTP: submit twice is one action; conflicts and bad fields are named", async () => {
  const s = scope();
  const idem = new IdemHttp(stack.api, stack.agentToken);
  const a = await idem.submit("stripe.charge", CHARGE, { scope: s, intent: "order 7" });
  const b = await idem.submit("stripe.charge", CHARGE, { scope: s, intent: "order 7" });
  assert.deepEqual([a.created, b.created], [true, false]);
  assert.equal(a.actionId, intentId(s, "order 7"));
  await assert.rejects(idem.submit("stripe.charge", { ...CHARGE, amount: 1 }, { scope: s, intent: "order 7" }), Conflict);
  await assert.rejects(idem.submit("stripe.charge", { ...CHARGE, currency: "EURO" }, { scope: s, intent: "x" }), (e: unknown) => {
    assert.ok(e instanceof InvalidArguments);
    assert.equal(e.field, "/args/currency");
    return true;
  });
  const done = await idem.awaitReceipt(a.actionId, 30_000);
  assert.equal(done.state, "succeeded");
  assert.equal((await stack.effects(a.actionId)).length, 1);
  await assert.rejects(new IdemHttp(stack.api, "idem_not_a_token").tools(), Unauthorized);
  assert.ok(!JSON.stringify(idem).includes(stack.agentToken), "the token never serializes");
});
