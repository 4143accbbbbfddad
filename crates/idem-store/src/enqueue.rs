//! Enqueue into the outbox inside the caller's own transaction.

use idem_core::{ActionId, CellName, State};
use idem_telemetry::TraceHeaders;
use serde::Serialize;
use sqlx::PgExecutor;

use crate::EnqueueError;

/// An action as an agent asks for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewAction {
    pub action_id: ActionId,
    pub cell: CellName,
    pub args: serde_json::Value,
    /// Actions with the same ordering key are delivered in enqueue order (Kafka partition
    /// key). Defaults to the action id.
    pub ordering_key: Option<String>,
    /// Trace context to continue. Empty: the current span's, captured at enqueue.
    pub trace: TraceHeaders,
    /// The named intent the id was derived from, stored with the action.
    pub intent: Option<Intent>,
    /// Who asks, shown to the person who approves it ("token:agent-7"). None: the database
    /// role enqueue runs as is recorded.
    pub submitter: Option<String>,
}

/// A named intent: the effect an agent means (`intent`) inside a scope (a session, a
/// conversation, a tenant). It names one action on every surface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Intent {
    pub scope: String,
    pub intent: String,
}

impl NewAction {
    /// An action whose id the caller chose (and must reuse on retry).
    pub fn new(action_id: ActionId, cell: CellName, args: serde_json::Value) -> Self {
        Self {
            action_id,
            cell,
            args,
            ordering_key: None,
            trace: TraceHeaders::default(),
            intent: None,
            submitter: None,
        }
    }

    /// The action a named intent means: the same (scope, intent) is the same action, and
    /// the same pair with other arguments is [`EnqueueError::Conflict`], never a second
    /// action. See [`ActionId::from_intent`].
    pub fn from_intent(
        scope: impl Into<String>,
        intent: impl Into<String>,
        cell: CellName,
        args: serde_json::Value,
    ) -> Self {
        let (scope, intent) = (scope.into(), intent.into());
        let mut a = Self::new(ActionId::from_intent(&scope, &intent), cell, args);
        a.intent = Some(Intent { scope, intent });
        a
    }

    /// An action whose id is derived from its arguments: the same scope, cell and
    /// arguments name the same action. **Risk:** a re-planned call whose arguments differ
    /// at all gets a second action; prefer [`NewAction::from_intent`].
    pub fn from_arguments(scope: &str, cell: CellName, args: serde_json::Value) -> Self {
        Self::new(ActionId::from_arguments(scope, &cell, &args), cell, args)
    }

    /// Continue the trace these headers describe (e.g. an HTTP request's `traceparent`)
    /// instead of the current span's.
    pub fn with_trace(mut self, trace: TraceHeaders) -> Self {
        self.trace = trace;
        self
    }

    /// Record who submitted the action (a token's name, a service's).
    pub fn submitted_by(mut self, who: impl Into<String>) -> Self {
        self.submitter = Some(who.into());
        self
    }

    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }
}

/// What enqueue did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub action_id: ActionId,
    /// The action's current state (`received` when just created).
    pub state: State,
    /// False when the action already existed with the same arguments.
    pub created: bool,
}

/// Enqueue `action` on `executor`: pass the agent's own transaction, and the action exists
/// exactly when that transaction commits. Idempotent on the action id; the same id with
/// other arguments is [`EnqueueError::Conflict`]. Goes through the `idem.enqueue` SQL
/// function, so Rust and other languages share one implementation.
#[tracing::instrument(name = "idem.enqueue", skip_all, fields(action_id = %action.action_id, cell = %action.cell))]
pub async fn enqueue<'e, E: PgExecutor<'e>>(
    executor: E,
    action: &NewAction,
) -> Result<Enqueued, EnqueueError> {
    check(action)?;
    // The relay and the worker continue the trace from here (or from the caller's headers).
    let trace = if action.trace.is_empty() {
        TraceHeaders::current()
    } else {
        action.trace.clone()
    };
    let row: Result<(uuid::Uuid, String, bool), sqlx::Error> = match &action.intent {
        None => {
            sqlx::query_as(
                "SELECT action_id, state, created FROM idem.enqueue($1, $2, $3, $4, $5, $6)",
            )
            .bind(action.action_id.as_uuid())
            .bind(action.cell.as_str())
            .bind(&action.args)
            .bind(action.ordering_key.as_deref())
            .bind(trace.to_json())
            .bind(action.submitter.as_deref())
            .fetch_one(executor)
            .await
        }
        // The id is derived in SQL too; the vectors in testdata/ keep both the same.
        Some(i) => {
            sqlx::query_as(
                "SELECT action_id, state, created \
                 FROM idem.enqueue_intent($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&i.scope)
            .bind(&i.intent)
            .bind(action.cell.as_str())
            .bind(&action.args)
            .bind(action.ordering_key.as_deref())
            .bind(trace.to_json())
            .bind(action.submitter.as_deref())
            .fetch_one(executor)
            .await
        }
    };
    match row {
        Ok((id, state, created)) => {
            if !created {
                // The same id with the same arguments: the earlier action stands.
                idem_telemetry::metrics::duplicate_suppressed(
                    idem_telemetry::metrics::Layer::Enqueue,
                    1,
                );
            }
            Ok(Enqueued {
                action_id: id.into(),
                state: state.parse().map_err(|e: idem_core::state::UnknownState| {
                    EnqueueError::Invalid {
                        field: None,
                        message: e.to_string(),
                    }
                })?,
                created,
            })
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("IDM01") => {
            Err(EnqueueError::Conflict {
                action_id: action.action_id,
            })
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("IDM03") => {
            Err(EnqueueError::Invalid {
                field: Some("/cell".into()),
                message: db.message().trim_start_matches("idem.enqueue: ").to_owned(),
            })
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("IDM05") => {
            let field = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.detail().map(str::to_owned));
            Err(EnqueueError::Invalid {
                field,
                message: db.message().trim_start_matches("idem.enqueue: ").to_owned(),
            })
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("IDM02") => {
            Err(EnqueueError::Invalid {
                field: None,
                message: db.message().to_owned(),
            })
        }
        // Text PostgreSQL cannot store (22P05: NUL in jsonb; 22021: bytes not valid in the
        // encoding) can never succeed: invalid, not unavailable.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("22P05") | Some("22021")) =>
        {
            Err(EnqueueError::Invalid {
                field: None,
                message: format!("text PostgreSQL cannot store: {}", db.message()),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Refuse what can never be enqueued before PostgreSQL sees it, naming the field: args that
/// are not an object, NUL (U+0000) anywhere in a text PostgreSQL must store, a bad scope or
/// intent.
fn check(action: &NewAction) -> Result<(), EnqueueError> {
    let invalid = |field: String, message: String| EnqueueError::Invalid {
        field: Some(field),
        message,
    };
    if !action.args.is_object() {
        return Err(invalid("/args".into(), "args must be a JSON object".into()));
    }
    if let Some(at) = nul_in(&action.args, String::from("/args")) {
        return Err(invalid(
            at,
            "text must not contain NUL (U+0000): PostgreSQL cannot store it".into(),
        ));
    }
    if action
        .ordering_key
        .as_deref()
        .is_some_and(|k| k.contains('\0'))
    {
        return Err(invalid(
            "/ordering_key".into(),
            "ordering_key must not contain NUL (U+0000)".into(),
        ));
    }
    if let Some(i) = &action.intent {
        for (field, value) in [("intent_scope", &i.scope), ("intent", &i.intent)] {
            idem_core::check_intent_part(field, value)
                .map_err(|e| invalid(format!("/{field}"), e.to_string()))?;
        }
    }
    Ok(())
}

/// The JSON pointer of the first string or key holding NUL.
fn nul_in(v: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_in(x, format!("{at}/{i}"))),
        Value::Object(map) => map.iter().find_map(|(k, x)| {
            let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
            if k.contains('\0') {
                Some(here)
            } else {
                nul_in(x, here)
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(args: serde_json::Value) -> NewAction {
        NewAction::new(
            ActionId::random(),
            CellName::new("stripe.charge").unwrap(),
            args,
        )
    }

    #[test]
    fn nul_is_refused_naming_the_field() {
        let field = |a: &NewAction| match check(a) {
            Err(EnqueueError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let a = action(json!({"amount": 1, "metadata": {"note": "a\0b"}}));
        assert_eq!(field(&a).as_deref(), Some("/args/metadata/note"));
        let a = action(json!({"items": ["ok", "x\0"]}));
        assert_eq!(field(&a).as_deref(), Some("/args/items/1"));
        let a = action(json!({"amount": 1})).with_ordering_key("k\0");
        assert_eq!(field(&a).as_deref(), Some("/ordering_key"));
        let a = NewAction::from_intent(
            "s",
            "pay\0",
            CellName::new("stripe.charge").unwrap(),
            json!({}),
        );
        assert_eq!(field(&a).as_deref(), Some("/intent"));
        assert!(check(&action(json!({"amount": 1}))).is_ok());
    }
}
