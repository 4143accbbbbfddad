/**
 * Action ids, derived exactly as the server derives them (docs/intents.md). A client that
 * computes an id differently names another action, and a retry under it is a second
 * effect; `test/ids.test.ts` checks `testdata/intent_ids.json`, the vectors Rust, SQL and
 * Python also pass.
 */
import { createHash } from "node:crypto";

/** Longest scope or intent, in characters (code points). */
export const MAX_INTENT_CHARS = 200;

/** Throws a RangeError naming `field` unless `value` is a valid scope or intent. */
export function checkIntentPart(field: string, value: string): void {
  if (typeof value !== "string") throw new RangeError(`${field}: must be a string`);
  if (value.trim() === "") throw new RangeError(`${field}: must not be blank`);
  const chars = [...value].length;
  if (chars > MAX_INTENT_CHARS)
    throw new RangeError(`${field}: at most ${MAX_INTENT_CHARS} characters, got ${chars}`);
  if (value.includes("\u0000")) throw new RangeError(`${field}: must not contain NUL (U+0000)`);
}

/**
 * The action id a named intent gets: UUIDv8 over SHA-256 of the version tag, scope and
 * intent as UTF-8, exactly as given (no trimming, no Unicode normalisation).
 */
export function intentId(scope: string, intent: string): string {
  checkIntentPart("scope", scope);
  checkIntentPart("intent", intent);
  const h = createHash("sha256")
    .update(Buffer.from("idem.intent.v1\u0000", "utf8"))
    .update(Buffer.from(scope, "utf8"))
    .update(Buffer.from([0]))
    .update(Buffer.from(intent, "utf8"))
    .digest()
    .subarray(0, 16);
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const hex = h.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
