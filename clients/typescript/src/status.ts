/** What an action is and how it ended, as every surface reports it. */

/** States an action does not leave on its own. */
export const SETTLED_STATES: ReadonlySet<string> = new Set([
  "succeeded",
  "failed",
  "rejected",
  "needs_human",
  "dead",
]);

/** The action an enqueue named; `created` says whether this call created it. */
export interface Enqueued {
  actionId: string;
  state: string;
  created: boolean;
}

/** An action's state and, once it succeeded, its receipt (the partner's reference). */
export interface ActionStatus {
  actionId: string;
  cell: string;
  state: string;
  settled: boolean;
  attempts: number;
  reason: string | null;
  receipt: Record<string, unknown> | null;
  createdAt: Date | null;
  settledAt: Date | null;
}

/** How a request names its action: a named intent in a scope, or an id the caller keeps. */
export type ActionName = { scope: string; intent: string } | { actionId: string };

export interface EnqueueOptions {
  /** Actions with the same ordering key run one at a time, in order. */
  orderingKey?: string;
}

const when = (v: unknown): Date | null => (v instanceof Date ? v : typeof v === "string" ? new Date(v) : null);

/** An action status from a row of `idem.action_status` or the HTTP API's JSON (same names). */
export function statusFrom(b: Record<string, unknown>): ActionStatus {
  const state = String(b.state);
  return {
    actionId: String(b.action_id),
    cell: String(b.cell),
    state,
    settled: SETTLED_STATES.has(state),
    attempts: Number(b.attempts ?? 0),
    reason: (b.reason as string | null) ?? null,
    receipt: (b.receipt as Record<string, unknown> | null) ?? null,
    createdAt: when(b.created_at),
    settledAt: when(b.settled_at),
  };
}
