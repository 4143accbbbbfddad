/**
 * An invoice and its charge committed in one transaction, the receipt awaited with LISTEN,
 * then the same charge submitted twice over HTTP (a retried request): one charge.
 *
 *   DATABASE_URL=postgres://... IDEM_URL=http://127.0.0.1:8080 IDEM_TOKEN=... \
 *     node dist/examples/charge.js
 */
import { randomUUID } from "node:crypto";

import pg from "pg";

import { awaitReceipt, enqueue, IdemHttp } from "../src/index.js";

const env = (k: string): string => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is required`);
  return v;
};
const thread = `conversation-${randomUUID()}`;

const db = new pg.Client({ connectionString: env("DATABASE_URL") });
await db.connect();
try {
  await db.query("BEGIN");
  await db.query("CREATE TEMP TABLE invoices (id text, amount int)");
  await db.query("INSERT INTO invoices VALUES ('inv-42', 4200)");
  const action = await enqueue(db, "stripe.charge", { amount: 4200, currency: "usd", customer: "cus_123" }, { scope: thread, intent: "invoice inv-42 payment" });
  await db.query("COMMIT"); // the action exists from here on, with the invoice
  const receipt = await awaitReceipt(db, action.actionId, 30_000);
  console.log(`outbox charge: ${receipt.state} ${action.actionId}`);
} finally {
  await db.end();
}

const idem = new IdemHttp(env("IDEM_URL"), env("IDEM_TOKEN"));
const args = { amount: 1500, currency: "usd", customer: "cus_123" };
for (const attempt of [1, 2]) {
  const a = await idem.submit("stripe.charge", args, { scope: thread, intent: "annual plan" });
  const done = await idem.awaitReceipt(a.actionId, 30_000);
  console.log(`http attempt ${attempt}: ${done.state} ${a.actionId} created=${a.created}`);
}
