//! Error bodies: one shape for every refusal, naming the field when one is at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// Why a request was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// What is wrong, in words a person can act on.
    pub error: String,
    /// JSON pointer into the arguments (`/amount`) when one field is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The existing action a conflict is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<uuid::Uuid>,
}

pub(crate) fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(Problem {
            error: message.into(),
            field: None,
            action_id: None,
        }),
    )
        .into_response()
}

/// 422 naming the field (empty pointer: the object as a whole).
pub(crate) fn invalid_field(field: String, message: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(Problem {
            error: message,
            field: Some(field),
            action_id: None,
        }),
    )
        .into_response()
}

/// 503 for a store failure; the detail goes to the log, not to the caller.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "{what} failed");
    problem(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
}

/// A JSON body extractor's refusal (malformed JSON, wrong content type, too large, unknown
/// field) as a [`Problem`] with the extractor's status.
pub(crate) fn bad_body(e: axum::extract::rejection::JsonRejection) -> Response {
    problem(e.status(), format!("bad request body: {}", e.body_text()))
}

/// 409: the request names an action that exists with other arguments.
pub(crate) fn conflict(action_id: uuid::Uuid, message: String) -> Response {
    (
        StatusCode::CONFLICT,
        Json(Problem {
            error: message,
            field: None,
            action_id: Some(action_id),
        }),
    )
        .into_response()
}
