/**
 * One (scope, intent) through every TypeScript surface: `intentId`, `enqueue` on the
 * caller's connection, `IdemHttp.submit` and `IdemHttp.callTool` — each the same action,
 * and each a conflict with another amount. Prints one JSON object; the cross-surface test
 * (clients/python/tests/test_surfaces.py) compares it with every other surface.
 *
 *   DATABASE_URL=postgres://... IDEM_URL=http://127.0.0.1:8080 IDEM_TOKEN=... \
 *   SCOPE='conversation-7 Zürich' INTENT='pay invoice 42' ARGS='{"amount":4200,...}' \
 *     node dist/examples/surface.js
 */
import pg from "pg";

import { Conflict, enqueue, IdemHttp, intentId } from "../src/index.js";

const env = (k: string): string => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is required`);
  return v;
};
const scope = env("SCOPE");
const intent = env("INTENT");
const args = JSON.parse(env("ARGS")) as Record<string, unknown>;
const other = { ...args, amount: Number(args.amount) + 1 };

/** The existing action a conflict names, or a note of what happened instead. */
async function conflictOf(f: () => Promise<unknown>): Promise<string> {
  try {
    await f();
    return "accepted";
  } catch (e) {
    if (e instanceof Conflict) return `conflict ${e.actionId ?? "without an action id"}`;
    return `error ${(e as Error).message}`;
  }
}

const out: Record<string, unknown> = { intentId: intentId(scope, intent) };

const db = new pg.Client({ connectionString: env("DATABASE_URL") });
await db.connect();
try {
  const e = await enqueue(db, "stripe.charge", args, { scope, intent });
  out.enqueue = { actionId: e.actionId, created: e.created };
  out.enqueueOther = await conflictOf(() => enqueue(db, "stripe.charge", other, { scope, intent }));
} finally {
  await db.end();
}

const idem = new IdemHttp(env("IDEM_URL"), env("IDEM_TOKEN"));
const s = await idem.submit("stripe.charge", args, { scope, intent });
out.submit = { actionId: s.actionId, created: s.created };
out.submitOther = await conflictOf(() => idem.submit("stripe.charge", other, { scope, intent }));
const t = await idem.callTool("stripe_charge", { ...args, intent }, scope);
out.tool = { isError: t.isError, actionId: t.result.action_id, state: t.result.state };
const tOther = await idem.callTool("stripe_charge", { ...other, intent }, scope);
out.toolOther = { isError: tOther.isError, error: tOther.result.error, actionId: tOther.result.action_id };

console.log(JSON.stringify(out));
