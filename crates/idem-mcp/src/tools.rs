//! Cells as MCP tools: the tool list, a call (validate, name, enqueue, wait) and status.

use std::time::Duration;

use idem_cells::{ArgError, Registry};
use idem_core::{ActionId, CellName, State};
use idem_store::{inbox, EnqueueError, NewAction, Stores};
use rmcp::model::{CallToolResult, JsonObject, Tool, ToolAnnotations};
use rmcp::ErrorData;
use serde_json::{json, Value};

/// The tool that reads an action by id.
pub const STATUS_TOOL: &str = "idem_status";

/// Longest wait a call may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long a call waits for a worker to take a new action before answering at once that
/// none has: a direct-Postgres worker claims in milliseconds and the Kafka path in well
/// under a second, so a longer silence means no worker is running (or all are busy).
const UNTAKEN_GRACE: Duration = Duration::from_secs(2);

/// Longest intent accepted (it names an action; it is not a payload).
const MAX_INTENT: usize = idem_core::action::MAX_INTENT_CHARS;

/// A cell's tool name: dots become underscores (`stripe.charge` → `stripe_charge`), the
/// characters every MCP client accepts in a tool name.
pub fn tool_name(cell: &str) -> String {
    cell.replace('.', "_")
}

pub(crate) fn list(cells: &Registry) -> Vec<Tool> {
    let mut tools: Vec<Tool> = cells
        .iter()
        .map(|c| {
            let mut schema = crate::schema::for_model(&c.input_schema());
            let what = schema["description"]
                .as_str()
                .unwrap_or("Run the cell")
                .to_owned();
            if let Some(props) = schema["properties"].as_object_mut() {
                props.insert(
                    "intent".into(),
                    json!({
                        "type": "string",
                        "description": "A short stable name (1 to 200 characters) for the effect you mean (e.g. \"refund order 1234\"). \
                                        The same intent in this session always means the same action: calling again \
                                        returns its receipt and never acts twice, even with other arguments (that is \
                                        refused as intent_conflict). A different action needs a different intent."
                    }),
                );
            }
            // Required: without a name, a re-planned call with other arguments would act twice.
            match schema["required"].as_array_mut() {
                Some(r) => r.push(json!("intent")),
                None => schema["required"] = json!(["intent"]),
            }
            let object: JsonObject = match schema {
                Value::Object(o) => o,
                _ => JsonObject::new(),
            };
            let description = format!(
                "{what} Runs at most once per intent through idem ({}); the result is the receipt, \
                 or awaiting_approval / needs_human with an action_id to check with {STATUS_TOOL}. \
                 Waits for the receipt (up to the server's tool wait, 20 s by default), but \
                 answers in about {} s, still in progress, if no worker has taken the action.",
                c.name(),
                UNTAKEN_GRACE.as_secs()
            );
            Tool::new(tool_name(c.name().as_str()), description, object).with_annotations(
                ToolAnnotations::new()
                    .read_only(!c.effectful())
                    .destructive(c.effectful())
                    .idempotent(true)
                    .open_world(true),
            )
        })
        .collect();
    let status_schema = json!({
        "type": "object",
        "properties": {
            "action_id": {"type": "string", "format": "uuid"},
            "wait_seconds": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT.as_secs(),
                             "description": "Wait up to this long for the action to settle."}
        },
        "required": ["action_id"],
        "additionalProperties": false
    });
    if let Value::Object(o) = crate::schema::for_model(&status_schema) {
        tools.push(
            Tool::new(
                STATUS_TOOL,
                "The state and receipt of an action a tool call started (by action_id).",
                o,
            )
            .with_annotations(ToolAnnotations::new().read_only(true)),
        );
    }
    tools
}

pub(crate) fn refused(kind: &str, message: impl Into<String>, extra: Value) -> CallToolResult {
    let mut v = json!({"error": kind, "message": message.into()});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    CallToolResult::structured_error(v)
}

fn store_error(e: impl std::fmt::Display) -> ErrorData {
    tracing::error!(error = %e, "MCP tool call: store failed");
    ErrorData::internal_error("idem's store is unavailable; retry the same call", None)
}

/// One tool call: check the arguments, derive the action id, enqueue, wait for an answer.
pub(crate) async fn call(
    stores: &Stores,
    cells: &Registry,
    call: crate::ToolCall<'_>,
    tool: &str,
    mut args: JsonObject,
) -> Result<CallToolResult, ErrorData> {
    let crate::ToolCall {
        scope,
        legacy_scopes,
        submitter,
        wait,
        ..
    } = call;
    let Some(cell) = cells.iter().find(|c| tool_name(c.name().as_str()) == tool) else {
        return Err(ErrorData::invalid_params(
            format!("no tool {tool:?}; list_tools names them"),
            None,
        ));
    };
    let cell: CellName = cell.name().clone();
    let given_intent = args.remove("intent");
    let mut args = Value::Object(args);
    // A strict model sends null for an optional argument it leaves out.
    if let Some(c) = cells.get(cell.as_str()) {
        crate::schema::strip_nulls(&c.input_schema(), &mut args);
    }
    match cells.check(cell.as_str(), &args) {
        Ok(()) => {}
        Err(ArgError::Invalid { field, message, .. }) => {
            return Ok(refused(
                "invalid_arguments",
                message,
                json!({"field": field}),
            ))
        }
        Err(e @ ArgError::UnknownCell { .. }) => {
            return Ok(refused("unknown_cell", e.to_string(), json!({})))
        }
    }
    let intent = match given_intent {
        Some(Value::String(s)) if idem_core::check_intent_part("intent", &s).is_ok() => s,
        _ => {
            return Ok(refused(
                "invalid_arguments",
                format!(
                    "intent: required, a non-empty string of at most {MAX_INTENT} characters \
                     without NUL, naming the effect you mean (e.g. \"refund order 1234\")"
                ),
                json!({"field": "/intent"}),
            ))
        }
    };
    // The same (scope, intent) is one action on every surface (HTTP, SQL, Rust, MCP)...
    let mut action = NewAction::from_intent(scope, intent.clone(), cell.clone(), args.clone());
    // ...unless an older idem named it under its prefixed MCP scope: then that action is
    // the one this call means (its receipt, or a conflict), never a second one.
    for old in legacy_scopes {
        let legacy =
            NewAction::from_intent(old.as_str(), intent.clone(), cell.clone(), args.clone());
        if stores
            .find(legacy.action_id)
            .await
            .map_err(store_error)?
            .is_some()
        {
            action = legacy;
            break;
        }
    }
    action.submitter = submitter.map(str::to_owned);
    let id = action.action_id;
    let (store, created) = match stores.enqueue(&action, None).await {
        Ok((name, e)) => (name, e.created),
        Err(EnqueueError::Conflict { action_id }) => {
            return Ok(refused(
                "intent_conflict",
                format!(
                    "intent {intent:?} already names action {action_id} with other arguments; \
                     if this is a different action, give it a different intent"
                ),
                json!({"action_id": action_id}),
            ))
        }
        Err(EnqueueError::Invalid { field, message }) => {
            let field = field.map(|f| f.strip_prefix("/args").map(str::to_owned).unwrap_or(f));
            return Ok(refused(
                "invalid_arguments",
                message,
                json!({ "field": field }),
            ));
        }
        Err(EnqueueError::Db(e)) => return Err(store_error(e)),
    };
    let home = stores.get(store).expect("enqueue names a store");
    let row = settle(home, id, wait, true).await?;
    Ok(answer(store, row, Some(!created)))
}

/// `idem_status`: read an action, waiting up to `wait_seconds` for it to settle.
pub(crate) async fn status(
    stores: &Stores,
    args: JsonObject,
    call: crate::ToolCall<'_>,
) -> Result<CallToolResult, ErrorData> {
    let default_wait = call.wait;
    let Some(id) = args
        .get("action_id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<uuid::Uuid>().ok())
    else {
        return Ok(refused(
            "invalid_arguments",
            "action_id: required UUID",
            json!({"field": "/action_id"}),
        ));
    };
    let wait = args
        .get("wait_seconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(default_wait)
        .min(MAX_WAIT);
    let id = ActionId::from(id);
    let Some((store, _)) = stores.find(id).await.map_err(store_error)? else {
        return Ok(answer("", None, None));
    };
    let home = stores.get(store).expect("find names a store");
    // A token bound to a scope prefix reads only actions named inside it; any other is
    // "no such action", as if it did not exist.
    if let Some(prefix) = call.bound {
        let named = inbox::intent_scope(home.pool(), id)
            .await
            .map_err(store_error)?;
        if !named.flatten().is_some_and(|s| s.starts_with(prefix)) {
            return Ok(answer(store, None, None));
        }
    }
    // A status call waits through a hold: after an approval the action stays
    // awaiting_approval until a worker takes it, and the caller asked to wait for the end.
    let row = settle(home, id, wait, false).await?;
    Ok(answer(store, row, None))
}

/// The action once it settles (or, with `stop_on_hold`, waits for a person), or as it
/// stands when `wait` ends.
async fn settle(
    home: &idem_store::Store,
    id: ActionId,
    wait: Duration,
    stop_on_hold: bool,
) -> Result<Option<inbox::ActionRow>, ErrorData> {
    let start = tokio::time::Instant::now();
    let deadline = start + wait;
    let mut pause = Duration::from_millis(20);
    loop {
        let row = inbox::get(home.pool(), id).await.map_err(store_error)?;
        let done = row.as_ref().is_none_or(|r| {
            r.state.is_settled() || (stop_on_hold && r.state == State::AwaitingApproval)
        });
        // A tool call does not hold a model for its whole wait when nothing will happen.
        let untaken =
            stop_on_hold && start.elapsed() >= UNTAKEN_GRACE && row.as_ref().is_some_and(untaken);
        if done || untaken || tokio::time::Instant::now() >= deadline {
            return Ok(row);
        }
        tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Received and never attempted: no worker has taken it yet.
fn untaken(r: &inbox::ActionRow) -> bool {
    r.state == State::Received && r.attempts == 0 && r.lease_owner.is_none()
}

/// The tool result for an action: the receipt, or what the caller should do next.
fn answer(store: &str, row: Option<inbox::ActionRow>, repeated: Option<bool>) -> CallToolResult {
    let Some(r) = row else {
        return refused("not_found", "no such action", json!({}));
    };
    let next = match r.state {
        State::Succeeded => "done: the receipt is the partner's record of the effect",
        State::AwaitingApproval => "a person must approve it first; call idem_status later with this action_id — do not call the tool again under a new intent",
        State::NeedsHuman => "idem could not tell whether the partner acted; a person will decide — do not retry under a new intent",
        State::Failed => "it did not happen: the partner confirmed no effect (see reason); idem will not send it again on its own, a person can; calling again with this intent returns this answer, and a different action needs a different intent",
        State::Rejected | State::Dead => "it did not happen and will not; see reason",
        _ if untaken(&r) => "accepted, but no worker has taken it yet (is an idem worker running?); it will run once one does — call idem_status with this action_id (optionally wait_seconds), and do not call again under a new intent",
        _ => "still in progress; call idem_status with this action_id (optionally wait_seconds)",
    };
    let mut body = json!({
        "action_id": r.action_id,
        "store": store,
        "cell": r.cell,
        "state": r.state,
        "settled": r.state.is_settled(),
        "receipt": r.receipt,
        "reason": r.reason,
        "next": next,
    });
    if let Some(rep) = repeated {
        body["repeated_call"] = json!(rep);
    }
    if matches!(r.state, State::Failed | State::Rejected | State::Dead) {
        CallToolResult::structured_error(body)
    } else {
        CallToolResult::structured(body)
    }
}
