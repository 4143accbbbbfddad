/**
 * OpenAI Agents SDK (JS) tools from `@idem/client/openai-agents`, run by the SDK's own
 * `run()` with a scripted model (no LLM): the SDK parses the calls, applies its tool
 * timeout and hands outputs back, as with a real model. Effects counted in the ledger.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Agent, run, setTracingDisabled, Usage, type Model, type ModelResponse } from "@openai/agents";

import { IdemHttp } from "../src/index.js";
import { idemTools } from "../src/openai-agents.js";
import { Stack } from "./stack.js";

setTracingDisabled(true);
let stack: Stack;
const scope = () => `ts-agents-${crypto.randomUUID()}`;
const ARGS = { amount: 2500, currency: "usd", customer: "cus_ts_agents", description: null, payment_method: null };

before(async () => {
  stack = await Stack.start();
});
after(async () => {
  await stack?.stop();
});

type Call = [callId: string, name: string, args: Record<string, unknown>];

/** Answers each turn with the next scripted tool calls, then a final message. */
class ScriptedModel implements Model {
  constructor(private readonly turns: Call[][]) {}
  async getResponse(): Promise<ModelResponse> {
    const calls = this.turns.shift();
    const output = calls
      ? calls.map(([callId, name, args]) => ({ type: "function_call" as const, id: `fc_${callId}`, callId, name, arguments: JSON.stringify(args), status: "completed" as const }))
      : [{ type: "message" as const, id: "msg", role: "assistant" as const, status: "completed" as const, content: [{ type: "output_text" as const, text: "done" }] }];
    return { usage: new Usage(), output };
  }
  // eslint-disable-next-line require-yield
  async *getStreamedResponse(): AsyncIterable<never> {
    throw new Error("not streamed");
  }
}

async function runAgent(idemScope: string, turns: Call[][], timeoutMs?: number): Promise<unknown[]> {
  // The idem-specific code an Agents SDK (JS) app needs (2 lines, counted in the issue note):
  const client = new IdemHttp(stack.api, stack.agentToken);
  const tools = await idemTools(client, { cells: ["stripe.charge"], ...(timeoutMs ? { timeoutMs } : {}) });
  const agent = new Agent({ name: "billing", tools, model: new ScriptedModel(turns) });
  const result = await run(agent, "charge the customer", { context: { idemScope } });
  return result.newItems
    .filter((i) => i.type === "tool_call_output_item")
    .map((i) => {
      const o = (i as unknown as { output: unknown }).output;
      return typeof o === "string" && o.startsWith("{") ? JSON.parse(o) : o;
    });
}

test("a re-planned call is one effect; the same intent with other arguments a conflict", async () => {
  const s = scope();
  const pay = { ...ARGS, intent: "pay order 9" };
  const [first, again, conflict] = (await runAgent(s, [
    [["call_a", "stripe_charge", pay]],
    [["call_b", "stripe_charge", pay]],
    [["call_c", "stripe_charge", { ...pay, amount: 2600 }]],
  ])) as Record<string, unknown>[];
  assert.equal(first!.state, "succeeded", JSON.stringify(first));
  assert.equal(again!.action_id, first!.action_id);
  assert.equal(again!.repeated_call, true);
  assert.equal(conflict!.error, "intent_conflict");
  assert.equal(conflict!.action_id, first!.action_id);
  assert.equal((await stack.effects(String(first!.action_id))).length, 1);
});

test("a call the SDK timed out and the model retried is one effect", async () => {
  // The SDK's own tool timeout cuts the call while the charge is at a slow partner; the
  // turn is run again (a retried step) with the same intent.
  const s = scope();
  await stack.script([{ delay: 3000 }]);
  const pay = { ...ARGS, intent: "pay order 10" };
  const [timedOut] = await runAgent(s, [[["c1", "stripe_charge", pay]]], 1000);
  assert.equal(typeof timedOut, "string");
  assert.match(String(timedOut), /timed out|timeout/i);
  const [retried] = (await runAgent(s, [[["c2", "stripe_charge", pay]]])) as Record<string, unknown>[];
  assert.equal(retried!.state, "succeeded", JSON.stringify(retried));
  assert.equal((await stack.effects(String(retried!.action_id))).length, 1);
});

test("an approval hold is reported, then followed up with idem_status", async () => {
  const s = scope();
  await stack.setPolicy("stripe.charge", "amount>=50000");
  let held: Record<string, unknown>;
  try {
    held = (await runAgent(s, [[["c1", "stripe_charge", { ...ARGS, amount: 90000, intent: "big one" }]]]))[0] as Record<string, unknown>;
  } finally {
    await stack.setPolicy("stripe.charge", "never");
  }
  assert.equal(held.state, "awaiting_approval");
  assert.match(String(held.next), /do not call the tool again under a new intent/);
  assert.equal((await stack.effects(String(held.action_id))).length, 0);
  await stack.approve(String(held.action_id));
  const done = (await runAgent(s, [[["c2", "idem_status", { action_id: held.action_id, wait_seconds: 30 }]]]))[0] as Record<string, unknown>;
  assert.equal(done.state, "succeeded");
  assert.equal((await stack.effects(String(held.action_id))).length, 1);
});

test("a worker killed mid-call still gives one effect", async () => {
  const s = scope();
  await stack.script([{ delay: 2500 }]);
  const before = await stack.requestsSeen();
  const pending = runAgent(s, [[["c1", "stripe_charge", { ...ARGS, intent: "pay order 12" }]]]);
  const deadline = Date.now() + 20_000;
  while ((await stack.requestsSeen()) === before) {
    assert.ok(Date.now() < deadline, "the partner call never started");
    await new Promise((r) => setTimeout(r, 50));
  }
  await stack.killWorker(); // SIGKILL while the charge is at the partner
  stack.startWorker();
  let r = (await pending)[0] as Record<string, unknown>;
  if (r.state !== "succeeded")
    r = (await runAgent(s, [[["c2", "idem_status", { action_id: r.action_id, wait_seconds: 45 }]]]))[0] as Record<string, unknown>;
  assert.equal(r.state, "succeeded", JSON.stringify(r));
  assert.equal((await stack.effects(String(r.action_id))).length, 1);
});
