/** The example in docs/typescript.md runs as written and charges once per intent. */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { REPO, Stack } from "./stack.js";

let stack: Stack;
before(async () => {
  stack = await Stack.start();
});
after(async () => {
  await stack?.stop();
});

test("examples/charge.ts runs and charges once per intent", async () => {
  const out = execFileSync(process.execPath, [join(REPO, "clients/typescript/dist/examples/charge.js")], {
    env: { ...process.env, DATABASE_URL: stack.databaseUrl, IDEM_URL: stack.api, IDEM_TOKEN: stack.agentToken },
    timeout: 120_000,
  }).toString();
  const lines = out.trim().split("\n");
  assert.match(lines[0]!, /^outbox charge: succeeded /, out);
  const [, , , , id1, c1] = lines[1]!.split(" ");
  const [, , , , id2, c2] = lines[2]!.split(" ");
  assert.equal(id1, id2, "the retried submit names the same action");
  assert.deepEqual([c1, c2], ["created=true", "created=false"]);
  assert.equal((await stack.effects(id1!)).length, 1);
  assert.equal((await stack.effects(lines[0]!.split(" ")[3]!)).length, 1);
});
