/**
 * Enqueue on the caller's own node-postgres client, and await a receipt with LISTEN.
 *
 * `enqueue` runs `idem.enqueue_intent` / `idem.enqueue` in whatever transaction the client
 * is in, so the action exists exactly when the caller's transaction commits. Inside an
 * open transaction it runs under a savepoint, so a refused enqueue (a conflict, bad
 * arguments) leaves the caller's other writes usable.
 */
import pg from "pg";

import { Conflict, IdemError, InvalidArguments, NotFound, Unavailable, Unsettled } from "./errors.js";
import { checkIntentPart, intentId } from "./ids.js";
import { statusFrom, type ActionName, type ActionStatus, type EnqueueOptions, type Enqueued } from "./status.js";

/** The channel an action's id is sent on when it settles. */
export const SETTLED_CHANNEL = "idem_settled";

const STATUS_SQL =
  "SELECT action_id::text, cell, state, attempts, reason, receipt, created_at, settled_at " +
  "FROM idem.action_status WHERE action_id = $1";
const INVALID = new Set(["IDM02", "IDM03", "IDM05", "22P05", "22021"]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** What `pg` can run queries on: a Client, a pooled client. */
export type Queryable = pg.ClientBase;

function statement(
  cell: string,
  args: Record<string, unknown>,
  name: ActionName,
  orderingKey: string | undefined,
): { text: string; values: unknown[]; id: string } {
  if (args === null || typeof args !== "object" || Array.isArray(args))
    throw new InvalidArguments("args must be a JSON object", "/args");
  const json = JSON.stringify(args);
  if ("actionId" in name) {
    if (!UUID.test(name.actionId)) throw new InvalidArguments("actionId must be a UUID", "/action_id");
    return {
      text: "SELECT action_id::text, state, created FROM idem.enqueue($1, $2, $3::jsonb, $4)",
      values: [name.actionId, cell, json, orderingKey ?? null],
      id: name.actionId.toLowerCase(),
    };
  }
  for (const [field, v] of [["intent_scope", name.scope], ["intent", name.intent]] as const) {
    try {
      checkIntentPart(field, v);
    } catch (e) {
      throw new InvalidArguments((e as Error).message, `/${field}`);
    }
  }
  return {
    text: "SELECT action_id::text, state, created FROM idem.enqueue_intent($1, $2, $3, $4::jsonb, $5)",
    values: [name.scope, name.intent, cell, json, orderingKey ?? null],
    id: intentId(name.scope, name.intent),
  };
}

interface PgError extends Error {
  code?: string;
  detail?: string;
  column?: string;
}

function translate(e: unknown, id: string): Error {
  const err = e as PgError;
  if (err.code === "IDM01") return new Conflict(err.message, id);
  if (err.code !== undefined && INVALID.has(err.code)) {
    const field = err.code === "IDM05" && err.detail ? err.detail : err.column ? `/${err.column}` : undefined;
    return new InvalidArguments(err.message, field);
  }
  if (err.code === undefined || err.code.startsWith("08") || err.code === "57P01")
    return new Unavailable(`PostgreSQL unavailable: ${err.message}`);
  return err;
}

/**
 * Enqueue `cell(args)` named by `{ scope, intent }` (or `{ actionId }`) in the client's
 * current transaction. Throws Conflict, InvalidArguments or Unavailable.
 */
export async function enqueue(
  client: Queryable,
  cell: string,
  args: Record<string, unknown>,
  name: ActionName,
  options: EnqueueOptions = {},
): Promise<Enqueued> {
  const s = statement(cell, args, name, options.orderingKey);
  // SAVEPOINT answers 25P01 outside a transaction block: then no savepoint is needed.
  let savepoint = true;
  try {
    await client.query("SAVEPOINT idem_enqueue");
  } catch (e) {
    if ((e as PgError).code !== "25P01") throw translate(e, s.id);
    savepoint = false;
  }
  try {
    const r = await client.query<{ action_id: string; state: string; created: boolean }>(s.text, s.values);
    if (savepoint) await client.query("RELEASE SAVEPOINT idem_enqueue");
    const row = r.rows[0]!;
    return { actionId: row.action_id, state: row.state, created: row.created };
  } catch (e) {
    if (savepoint) await client.query("ROLLBACK TO SAVEPOINT idem_enqueue").catch(() => undefined);
    throw translate(e, s.id);
  }
}

function toStatus(row: Record<string, unknown> | undefined, id: string): ActionStatus {
  if (row === undefined) throw new NotFound(id);
  return statusFrom(row);
}

/** The action as it stands now. */
export async function status(client: Queryable, actionId: string): Promise<ActionStatus> {
  const r = await client.query(STATUS_SQL, [actionId]);
  return toStatus(r.rows[0], actionId);
}

/**
 * Wait up to `timeoutMs` for the action to settle, woken by `NOTIFY idem_settled` (no
 * polling). Returns the settled status (branch on `state`); throws Unsettled if it is
 * still open. A client passed in must not be inside a transaction (LISTEN takes effect at
 * commit); with a connection string a client of its own is used.
 */
export async function awaitReceipt(
  clientOrUrl: Queryable | string,
  actionId: string,
  timeoutMs: number,
): Promise<ActionStatus> {
  const own = typeof clientOrUrl === "string" ? new pg.Client({ connectionString: clientOrUrl }) : undefined;
  const client = own ?? (clientOrUrl as Queryable);
  const id = actionId.toLowerCase();
  let wake: (() => void) | undefined;
  const onNotify = (n: pg.Notification): void => {
    if (n.channel === SETTLED_CHANNEL && n.payload === id) wake?.();
  };
  try {
    if (own) await own.connect();
    client.on("notification", onNotify);
    await client.query(`LISTEN ${SETTLED_CHANNEL}`);
    const deadline = Date.now() + timeoutMs;
    // Listening before the first read: a settle between the two is not missed.
    let s = await status(client, id);
    while (!s.settled) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Unsettled(id, s.state);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      wake = undefined;
      s = await status(client, id);
    }
    return s;
  } catch (e) {
    if (e instanceof IdemError) throw e;
    throw translate(e, id);
  } finally {
    client.removeListener("notification", onNotify);
    if (own) await own.end().catch(() => undefined);
    else await client.query(`UNLISTEN ${SETTLED_CHANNEL}`).catch(() => undefined);
  }
}
