/**
 * idem's cells as OpenAI Agents SDK (JS) tools.
 *
 *     const tools = await idemTools(new IdemHttp(url, token), { cells: ["stripe.charge"] });
 *     const agent = new Agent({ name: "billing", tools });
 *     await run(agent, prompt, { context: { idemScope: conversationId } });
 *
 * The scope is the run context's `idemScope` (or `scope(runContext)`); the intent comes
 * from the model's call, so a retried call, a re-planned call under a new call id and a
 * replay after a crash name one action.
 */
import { tool, type FunctionTool, type RunContext } from "@openai/agents";

import { InvalidArguments, Unavailable } from "./errors.js";
import type { IdemHttp, ToolSpec } from "./http.js";

/** The tool that reads an action by id (for approval holds and long calls). */
export const STATUS_TOOL = "idem_status";

export type ScopeOf = (ctx: RunContext<unknown> | undefined) => string;

/** The run's scope: `context.idemScope`. */
export const contextScope: ScopeOf = (ctx) => {
  const c = ctx?.context as { idemScope?: unknown } | undefined;
  if (typeof c?.idemScope === "string" && c.idemScope !== "") return c.idemScope;
  throw new InvalidArguments(
    "idem needs a scope for this tool call (where intents are unique): run with " +
      "{ context: { idemScope: conversationId } } or pass scope",
    "scope",
  );
};

export interface IdemToolsOptions {
  /** Cells to offer (`stripe.charge`); every cell the server has if absent. */
  cells?: string[];
  scope?: ScopeOf;
  /** How long a call waits for its action to settle before answering "in progress". */
  waitSeconds?: number;
  /** The SDK's own per-call timeout (ms); a timed-out call may be retried safely. */
  timeoutMs?: number;
}

/** Whether a schema is in OpenAI's strict dialect (every object closed, every key required). */
function isStrict(s: unknown): boolean {
  if (s === null || typeof s !== "object") return true;
  const o = s as Record<string, unknown>;
  if (o.type === "object" || (Array.isArray(o.type) && o.type.includes("object"))) {
    const props = o.properties as Record<string, unknown> | undefined;
    if (!props || o.additionalProperties !== false) return false;
    const req = new Set((o.required as string[] | undefined) ?? []);
    if (!Object.keys(props).every((k) => req.has(k))) return false;
    return Object.values(props).every(isStrict);
  }
  if (o.items !== undefined && !isStrict(o.items)) return false;
  if (Array.isArray(o.anyOf) && !o.anyOf.every(isStrict)) return false;
  return true;
}

function render(v: unknown): string {
  return JSON.stringify(v);
}

function toTool(client: IdemHttp, spec: ToolSpec, opts: IdemToolsOptions): FunctionTool {
  const scopeOf = opts.scope ?? contextScope;
  const wait = opts.waitSeconds ?? 20;
  const strict = isStrict(spec.input_schema);
  return tool({
    name: spec.name,
    description: spec.description,
    // The server's schema is already in the dialect model APIs accept.
    parameters: spec.input_schema as never,
    strict: strict as true,
    ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }),
    execute: async (input: unknown, ctx?: RunContext<unknown>) => {
      const scope = spec.name === STATUS_TOOL ? "-" : scopeOf(ctx);
      const args = (typeof input === "string" ? JSON.parse(input) : input) as Record<string, unknown>;
      try {
        const r = await client.callTool(spec.name, args, scope, wait);
        return render(r.result);
      } catch (e) {
        if (e instanceof Unavailable)
          return render({
            error: "unavailable",
            message: `${e.message}. Calling this tool again with the same intent is safe: it cannot act twice.`,
          });
        throw e;
      }
    },
  }) as FunctionTool;
}

/** A tool per cell (all the server offers, or `cells`) plus `idem_status`. */
export async function idemTools(client: IdemHttp, opts: IdemToolsOptions = {}): Promise<FunctionTool[]> {
  const specs = await client.tools();
  let chosen = specs;
  if (opts.cells !== undefined) {
    const wanted = new Set(opts.cells.map((c) => c.replace(/\./g, "_")));
    const known = new Set(specs.map((s) => s.name));
    const unknown = [...wanted].filter((w) => !known.has(w));
    if (unknown.length > 0)
      throw new InvalidArguments(`no tool for ${unknown.join(", ")}; the server offers ${[...known].join(", ")}`, "cells");
    chosen = specs.filter((s) => wanted.has(s.name) || s.name === STATUS_TOOL);
  }
  return chosen.map((s) => toTool(client, s, opts));
}
