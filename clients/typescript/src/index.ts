/**
 * idem from TypeScript: name an action by (scope, intent), enqueue it in your own
 * transaction (node-postgres) or over HTTP, await its receipt. The OpenAI Agents SDK
 * adapter is `@idem/client/openai-agents`.
 */
export { Conflict, IdemError, InvalidArguments, NotFound, Unauthorized, Unavailable, Unsettled } from "./errors.js";
export { IdemHttp, MAX_POLL_SECONDS, type ToolResult, type ToolSpec } from "./http.js";
export { checkIntentPart, intentId, MAX_INTENT_CHARS } from "./ids.js";
export { awaitReceipt, enqueue, SETTLED_CHANNEL, status, type Queryable } from "./sql.js";
export { SETTLED_STATES, statusFrom, type ActionName, type ActionStatus, type EnqueueOptions, type Enqueued } from "./status.js";
