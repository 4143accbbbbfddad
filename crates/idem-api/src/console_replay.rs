//! The console's replay of a dead letter: a confirmation page that shows the bytes, why they
//! went dead and where from, then the audited decision (the same as
//! `POST /v1/dead-letters/{id}/replay`). Like every console form it carries a token bound
//! to the session and to this letter.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use crate::console::{after, cookie_secret, csrf_token, esc, form_session, signed_in, STYLE};
use crate::dead_letters::{replay_letter, store_named, OnStore};
use crate::ApiState;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route(
        "/console/dead-letters/{id}/replay",
        get(confirm).post(replay),
    )
}

fn letter_id(id: &str) -> Result<i64, Response> {
    id.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            Html("dead letter id must be a whole number".to_owned()),
        )
            .into_response()
    })
}

/// The bytes as a person can read them: text when UTF-8, else hex.
pub(crate) fn raw_for_people(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) => esc(text),
        Err(_) => format!("(not UTF-8, hex) {}", hex::encode(raw)),
    }
}

/// The form's own path: the letter's id and, where it is not the default, its store (ids
/// are per store), so the CSRF token is bound to exactly this letter.
fn replay_path(id: i64, on: &OnStore) -> String {
    match &on.store {
        Some(s) => format!(
            "/console/dead-letters/{id}/replay?store={}",
            crate::console::url_escape(s)
        ),
        None => format!("/console/dead-letters/{id}/replay"),
    }
}

fn html_store(state: &ApiState, on: &OnStore) -> Result<idem_store::Store, Response> {
    store_named(state, on)
        .map_err(|_| (StatusCode::NOT_FOUND, Html("no such store".to_owned())).into_response())
}

async fn confirm(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(on): Query<OnStore>,
) -> Response {
    if let Err(r) = signed_in(&state, &headers).await {
        return r;
    }
    let id = match letter_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let store = match html_store(&state, &on) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let letter = match idem_store::explore::dead_letter(store.pool(), id).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Html("no such dead letter".to_owned()),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "console replay confirmation failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Html("store unavailable".to_owned()),
            )
                .into_response();
        }
    };
    let path = replay_path(id, &on);
    let csrf = csrf_token(cookie_secret(&headers).unwrap_or_default(), &path);
    let form = match (&letter.replayed_at, &letter.replayed_by) {
        (Some(at), by) => format!(
            "<p class=flash id=already>Replayed already by {} at {}.</p>",
            esc(by.as_deref().unwrap_or("?")),
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        _ => format!(
            "<form method=post action=\"{path}\"><input type=hidden name=csrf value=\"{csrf}\">\
             <label>reason <input type=text name=reason required \
             placeholder=\"what was fixed\"></label> \
             <button type=submit id=confirm class=resend>Yes, replay: deliver these bytes again</button></form>"
        ),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>idem console: replay dead letter {id}?</title>\
         <style>{STYLE}</style></head><body><h1>Replay dead letter {id}?</h1>\
         <section class=\"item failed\" id=confirmation>\
         <p class=summary><b>{}</b></p><p>{} · from <code>{}</code> · action {}</p>\
         <h4>The bytes, as delivered</h4><pre class=raw>{}</pre>\
         <p>Replaying puts these bytes back into the outbox once. It is refused, changing \
         nothing, while they still cannot be read, name a cell no worker registered, or name an \
         action that already exists. The inbox decides as always: no second effect.</p>\
         {form} <a href=/console/dead-letters id=cancel>Back, decide nothing</a></section></body></html>",
        esc(&letter.reason),
        letter.at.format("%Y-%m-%d %H:%M:%S UTC"),
        esc(&letter.source.to_string()),
        letter
            .action_id
            .map(|a| format!("<code>{a}</code>"))
            .unwrap_or_else(|| "unknown".into()),
        raw_for_people(&letter.raw),
    ))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct ReplayForm {
    csrf: String,
    reason: String,
}

async fn replay(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(on): Query<OnStore>,
    Form(f): Form<ReplayForm>,
) -> Response {
    let id = match letter_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let who = match form_session(&state, &headers, &replay_path(id, &on), &f.csrf).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let store = match html_store(&state, &on) {
        Ok(s) => s,
        Err(r) => return r,
    };
    after(
        replay_letter(&store, &who, id, f.reason)
            .await
            .map(|action| format!("dead letter {id} replayed: action {action} delivered again")),
    )
}
