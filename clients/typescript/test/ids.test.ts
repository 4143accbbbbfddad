import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { intentId } from "../src/index.js";
import { REPO } from "./stack.js";

const vectors = JSON.parse(readFileSync(join(REPO, "testdata", "intent_ids.json"), "utf8")) as {
  intent_ids: { vectors: { scope: string; intent: string; id: string; note: string }[] };
};

test("intent ids match every shared vector (Rust, SQL, Python pass the same)", () => {
  assert.ok(vectors.intent_ids.vectors.length >= 8);
  for (const v of vectors.intent_ids.vectors) assert.equal(intentId(v.scope, v.intent), v.id, v.note);
});

test("intent ids are UUIDv8 and separate scope from intent", () => {
  assert.match(intentId("a", "b"), /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(intentId("ab", "c"), intentId("a", "bc"));
});

test("bad scopes and intents are refused naming the part", () => {
  for (const bad of ["", "   ", "a\u0000b", "x".repeat(201)]) assert.throws(() => intentId("s", bad), /intent/);
  // 200 astral-plane characters are 200 characters, not 400 UTF-16 units.
  assert.doesNotThrow(() => intentId("s", "📧".repeat(200)));
});
