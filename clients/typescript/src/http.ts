/**
 * idem's HTTP API with `fetch`: submit, read with long-poll `?wait=`, and the tool
 * endpoints the framework adapters use (`/v1/tools`: the same tools and answers as MCP).
 */
import { Conflict, InvalidArguments, NotFound, Unauthorized, Unavailable, Unsettled } from "./errors.js";
import { statusFrom, type ActionName, type ActionStatus, type EnqueueOptions, type Enqueued } from "./status.js";

/** The longest wait the server grants one long poll (seconds). */
export const MAX_POLL_SECONDS = 60;

/** One tool as a model API wants it (strict-mode schema with the required `intent`). */
export interface ToolSpec {
  name: string;
  description: string;
  input_schema: Record<string, unknown>;
  cell: string | null;
  effectful: boolean;
}

/** A tool call's answer, written for a model: the receipt, or what to do next. */
export interface ToolResult {
  isError: boolean;
  result: Record<string, unknown>;
}

interface Problem {
  error?: string;
  field?: string;
  action_id?: string;
}

/** A client of `idem serve`; the token needs `submit` (and `read` to read actions). */
export class IdemHttp {
  readonly #base: string;
  readonly #token: string;
  readonly #timeoutMs: number;

  constructor(baseUrl: string, token: string, options: { timeoutMs?: number } = {}) {
    this.#base = baseUrl.replace(/\/+$/, "");
    this.#token = token;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
  }

  /** The token stays out of logs and inspection. */
  toJSON(): Record<string, string> {
    return { baseUrl: this.#base, token: "<redacted>" };
  }

  async #send(method: string, path: string, body?: unknown, extraMs = 0, id?: string): Promise<unknown> {
    let r: Response;
    try {
      r = await fetch(`${this.#base}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs + extraMs),
      });
    } catch (e) {
      throw new Unavailable(`idem unreachable: ${(e as Error).message}`);
    }
    const text = await r.text();
    let parsed: unknown = undefined;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (r.ok) return { status: r.status, body: parsed };
    const p = (parsed ?? {}) as Problem;
    const msg = p.error ?? (text || r.statusText);
    if (r.status === 409) throw new Conflict(msg, p.action_id);
    if (r.status === 401 || r.status === 403) throw new Unauthorized(msg);
    if (r.status === 404 && id !== undefined) throw new NotFound(id);
    if ([429, 502, 503, 504].includes(r.status) || r.status >= 500) throw new Unavailable(`HTTP ${r.status}: ${msg}`);
    throw new InvalidArguments(msg, p.field);
  }

  /** `POST /v1/actions`: the same call again is the same action. */
  async submit(cell: string, args: Record<string, unknown>, name: ActionName, options: EnqueueOptions = {}): Promise<Enqueued> {
    const body: Record<string, unknown> = { cell, args };
    if ("actionId" in name) body.action_id = name.actionId;
    else Object.assign(body, { intent_scope: name.scope, intent: name.intent });
    if (options.orderingKey !== undefined) body.ordering_key = options.orderingKey;
    const r = (await this.#send("POST", "/v1/actions", body)) as { status: number; body: { action_id: string; state: string } };
    return { actionId: r.body.action_id, state: r.body.state, created: r.status === 201 };
  }

  /** `GET /v1/actions/{id}`, long-polling up to `waitSeconds` (at most 60). */
  async status(actionId: string, waitSeconds = 0): Promise<ActionStatus> {
    const w = Math.max(0, Math.min(Math.floor(waitSeconds), MAX_POLL_SECONDS));
    const r = (await this.#send("GET", `/v1/actions/${encodeURIComponent(actionId)}?wait=${w}`, undefined, w * 1000, actionId)) as {
      body: Record<string, unknown>;
    };
    return statusFrom(r.body);
  }

  /** Long-poll until the action settles; Unsettled after `timeoutMs`. */
  async awaitReceipt(actionId: string, timeoutMs: number): Promise<ActionStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      const s = await this.status(actionId, Math.max(0, Math.floor(left / 1000)));
      if (s.settled) return s;
      if (left < 1000 || Date.now() >= deadline) throw new Unsettled(actionId, s.state);
    }
  }

  /** `GET /v1/tools`: every cell as a tool, and `idem_status`. */
  async tools(): Promise<ToolSpec[]> {
    const r = (await this.#send("GET", "/v1/tools")) as { body: ToolSpec[] };
    return r.body;
  }

  /** `POST /v1/tools/{name}`: one tool call in `scope` (the run or thread). */
  async callTool(name: string, args: Record<string, unknown>, scope: string, waitSeconds = 20): Promise<ToolResult> {
    const r = (await this.#send(
      "POST",
      `/v1/tools/${encodeURIComponent(name)}`,
      { scope, arguments: args, wait_seconds: waitSeconds },
      waitSeconds * 1000,
    )) as { body: { is_error: boolean; result: Record<string, unknown> } };
    return { isError: r.body.is_error, result: r.body.result };
  }
}
