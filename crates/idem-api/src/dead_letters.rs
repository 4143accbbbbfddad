//! Dead letters over HTTP: what could not become an action, with its raw bytes and where
//! it came from, and a person's audited replay of one.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use idem_store::explore::{self, DeadLetterRow};
use idem_store::replay::{self, ReplayError};
use idem_store::tokens::Scope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::authorize;
use crate::decisions::required_reason;
use crate::problem::{bad_body, problem, unavailable, Problem};
use crate::ApiState;

/// How many letters one listing returns (newest first).
const PAGE: i64 = 100;

/// One dead letter as kept: the bytes exactly as delivered.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Ids are per store: the store a replay names (`?store=`).
    pub store: String,
    pub id: i64,
    /// The action the bytes name, when that much could be read.
    pub action_id: Option<uuid::Uuid>,
    pub reason: String,
    /// Where it came from: `{"outbox_seq": N}` or Kafka `topic`, `partition`, `offset`.
    #[schema(value_type = Object)]
    pub source: serde_json::Value,
    pub at: DateTime<Utc>,
    /// The raw bytes, base64 (standard alphabet, padded).
    pub raw_base64: String,
    /// The raw bytes as text, when they are UTF-8.
    pub raw_text: Option<String>,
    pub replayed_at: Option<DateTime<Utc>>,
    /// `human:token:<name>` of whoever replayed it.
    pub replayed_by: Option<String>,
    pub replay_reason: Option<String>,
}

impl DeadLetterView {
    fn new(store: String, l: DeadLetterRow) -> Self {
        Self {
            store,
            id: l.id,
            action_id: l.action_id,
            reason: l.reason,
            source: l.source,
            at: l.at,
            raw_base64: base64::engine::general_purpose::STANDARD.encode(&l.raw),
            raw_text: String::from_utf8(l.raw).ok(),
            replayed_at: l.replayed_at,
            replayed_by: l.replayed_by,
            replay_reason: l.replay_reason,
        }
    }
}

/// Deliveries that could not become an action (undecodable, an unknown envelope version,
/// an id reused with other arguments), newest first, at most 100.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "decisions", operation_id = "list_dead_letters",
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, body = [DeadLetterView]),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem),
    ))]
pub(crate) async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Approve).await {
        return r;
    }
    let mut g = state
        .stores
        .gather(|pool| async move { explore::dead_letters(&pool, PAGE).await })
        .await;
    if g.all_down() {
        return unavailable("dead letters", g.unavailable.join("; "));
    }
    g.items.sort_by_key(|p| std::cmp::Reverse(p.item.at));
    g.items.truncate(PAGE as usize);
    let views: Vec<DeadLetterView> = g
        .items
        .into_iter()
        .map(|p| DeadLetterView::new(p.store, p.item))
        .collect();
    crate::partial(Json(views).into_response(), &g.unavailable)
}

/// Which store a dead letter is on (`?store=`; the default store when not given).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct OnStore {
    /// The store's name, as `GET /v1/dead-letters` gives it.
    pub store: Option<String>,
}

/// The store named by `?store=`, or the default one.
pub(crate) fn store_named(state: &ApiState, on: &OnStore) -> Result<idem_store::Store, Response> {
    match on.store.as_deref() {
        None => Ok(state.store.clone()),
        Some(name) => state.stores.get(name).cloned().ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                format!("store: no store is named {name:?}"),
            )
        }),
    }
}

/// Why a dead letter is replayed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Why (kept on the letter; not blank).
    #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub dead_letter: i64,
    /// The action the bytes name; it is delivered again and decided by the inbox as always.
    pub action_id: uuid::Uuid,
    /// `human:token:<name>`.
    pub by: String,
}

/// Put a dead letter's bytes back into the outbox, once, after what made it dead was fixed
/// (the workers upgraded, the cell deployed). Refused, changing nothing, while the bytes still
/// cannot be read, name an unregistered cell, or name an action that already exists.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "decisions",
    operation_id = "replay_dead_letter",
    params(("id" = i64, Path, description = "The dead letter's id"), OnStore), request_body = Replay,
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, body = Replayed),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "Replayed already, still unreadable, an unknown cell, or the action exists", body = Problem),
        (status = 413, description = "Body over 64 KiB", body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Missing reason", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn replay(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(on): Query<OnStore>,
    body: Result<Json<Replay>, JsonRejection>,
) -> Response {
    let token = match authorize(&state, &headers, Scope::Approve).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<i64>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "dead letter id must be a whole number",
        );
    };
    let Json(r) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let who = format!("token:{}", token.name);
    let store = match store_named(&state, &on) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match replay_letter(&store, &who, id, r.reason).await {
        Ok(action_id) => Json(Replayed {
            dead_letter: id,
            action_id,
            by: format!("human:{who}"),
        })
        .into_response(),
        Err(r) => r,
    }
}

/// Replay a letter (shared by the API and the console); the action id its bytes name.
pub(crate) async fn replay_letter(
    store: &idem_store::Store,
    who: &str,
    id: i64,
    reason: String,
) -> Result<uuid::Uuid, Response> {
    let reason = required_reason(reason)?;
    replay::dead_letter(store.pool(), id, who, &reason)
        .await
        .map(|a| a.as_uuid())
        .map_err(|e| match e {
            ReplayError::NotFound(_) => problem(StatusCode::NOT_FOUND, e.to_string()),
            ReplayError::NoActor => problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            ReplayError::Store(e) => unavailable("replay", e),
            ReplayError::AlreadyReplayed { .. }
            | ReplayError::StillUndecodable { .. }
            | ReplayError::UnknownCell { .. }
            | ReplayError::Conflict { .. }
            | ReplayError::AlreadyAnAction { .. } => problem(StatusCode::CONFLICT, e.to_string()),
        })
}
