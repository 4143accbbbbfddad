/** Errors a caller can branch on: retry, fix the request, or read the existing action. */

/** Base of every error this package throws. */
export class IdemError extends Error {
  override name = "IdemError";
}

/**
 * The id or (scope, intent) already names an action with other arguments. Never retry
 * with these arguments: read `actionId`, or give a different action a different intent.
 */
export class Conflict extends IdemError {
  override name = "Conflict";
  constructor(message: string, readonly actionId: string | undefined) {
    super(message);
  }
}

/** The request can never succeed as it is; `field` is a JSON pointer (`/args/amount`). */
export class InvalidArguments extends IdemError {
  override name = "InvalidArguments";
  constructor(message: string, readonly field: string | undefined) {
    super(message);
  }
}

/** idem could not answer. Retrying the same call (same intent or id) is safe. */
export class Unavailable extends IdemError {
  override name = "Unavailable";
}

/** The token is missing, revoked or lacks the scope (HTTP 401/403). */
export class Unauthorized extends IdemError {
  override name = "Unauthorized";
}

/** No action has this id. */
export class NotFound extends IdemError {
  override name = "NotFound";
  constructor(readonly actionId: string) {
    super(`no action ${actionId}`);
  }
}

/** The action did not settle within the wait; it goes on. Wait again with the same id. */
export class Unsettled extends IdemError {
  override name = "Unsettled";
  constructor(readonly actionId: string, readonly state: string) {
    super(`action ${actionId} not settled in time (state ${state})`);
  }
}
