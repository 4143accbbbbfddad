//! The approver console: a server-rendered page where a person with the approve scope sees
//! what waits for them — approvals and needs_human cases with the exact arguments, the
//! cell card's explanation and the attempt history — and decides. Decisions go through the
//! same code as the API and are audited as `console:<token name>`.
//!
//! Sign-in takes an API token once and keeps it in an HttpOnly, SameSite=Strict cookie
//! scoped to `/console`, so another site cannot make the browser post a decision; every
//! decision form also carries a token bound to the signed-in secret and to that form's
//! action ([`csrf_token`]), so a browser without SameSite support is covered too.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use idem_core::ActionId;
use idem_store::decisions::{self, Waiting};
use idem_store::tokens::{Scope, TokenInfo};
use idem_store::Placed;
use serde::Deserialize;

use crate::auth::authorize_secret;
use crate::decisions::{record_decision, resend_action, resolve_case, Decision, Resolve};
use crate::ApiState;

const COOKIE: &str = "idem_console";

/// How many waiting items of each kind the page shows.
const PAGE: i64 = 200;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/console", get(page))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route(
            "/console/actions/{id}/approve",
            get(confirm_approve).post(approve),
        )
        .route(
            "/console/actions/{id}/reject",
            get(confirm_reject).post(reject),
        )
        .route("/console/actions/{id}/resolve", post(resolve))
        .route("/console/actions/{id}/resend", post(resend))
}

/// Which list an item is in: what it waits for, and so which forms it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Approval,
    Doubt,
    Failed,
}

/// Text made safe for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

pub(crate) async fn signed_in(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<TokenInfo, Response> {
    authorize_secret(state, cookie_secret(headers), Scope::Approve)
        .await
        .map_err(|r| {
            let status = r.status();
            let why = match status {
                StatusCode::FORBIDDEN => "That token lacks the approve scope.",
                StatusCode::TOO_MANY_REQUESTS => "Too many requests for this token; wait a moment.",
                StatusCode::SERVICE_UNAVAILABLE => "The store is unavailable.",
                _ => "",
            };
            (status, Html(login_page(why))).into_response()
        })
}

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}\
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}\
.item{border:1px solid #999;border-radius:6px;padding:1rem;margin:1rem 0}\
.approval{background:#ffd600}.doubt{background:#ff8a65}.failed{background:#e0e0e0}\
pre{background:#fff;border:1px solid #ccc;padding:.5rem;white-space:pre-wrap;overflow-wrap:anywhere}\
table{border-collapse:collapse;background:#fff;max-width:100%}td,th{border:1px solid #ccc;padding:.2rem .4rem;font-size:.85rem;text-align:left}td.wrap{overflow-wrap:anywhere;min-width:18rem}\
form{display:inline-block;margin:.3rem 1rem .3rem 0}input[type=text]{width:16rem}\
.none{color:#555}.flash{background:#c8e6c9;padding:.5rem}.summary{font-size:1.1rem;font-weight:600}";

fn login_page(why: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>idem console: sign in</title>\
         <style>{STYLE}</style></head><body><h1>idem approver console</h1>\
         <p>{}</p><form method=post action=/console/login>\
         <label>API token (approve scope) <input type=password name=token id=token autocomplete=off></label> \
         <button type=submit id=sign-in>Sign in</button></form></body></html>",
        esc(why)
    )
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

async fn login(State(state): State<ApiState>, Form(f): Form<Login>) -> Response {
    let secret = f.token.trim().to_owned();
    match authorize_secret(&state, Some(&secret), Scope::Approve).await {
        Ok(_) => {
            let mut r = Redirect::to("/console").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/console"
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(r) => (
            r.status(),
            Html(login_page(
                "That token was refused (unknown, revoked or without the approve scope).",
            )),
        )
            .into_response(),
    }
}

async fn logout() -> Response {
    let mut r = Redirect::to("/console").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "idem_console=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/console",
        ),
    );
    r
}

#[derive(Debug, Deserialize)]
struct Flash {
    done: Option<String>,
}

async fn page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    axum::extract::Query(flash): axum::extract::Query<Flash>,
) -> Response {
    let token = match signed_in(&state, &headers).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let secret = cookie_secret(&headers).unwrap_or_default();
    use idem_core::State as S;
    let list = |which: S, ended: bool| {
        state.stores.gather(move |pool| async move {
            if ended {
                decisions::ended_recently(&pool, which, PAGE).await
            } else {
                decisions::waiting(&pool, which, PAGE).await
            }
        })
    };
    let (mut approvals, mut doubts, mut failed, mut dead) = tokio::join!(
        list(S::AwaitingApproval, false),
        list(S::NeedsHuman, false),
        list(S::Failed, true),
        list(S::Dead, true),
    );
    if approvals.all_down() {
        tracing::error!(error = %approvals.unavailable.join("; "), "console listing failed");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Html("store unavailable".to_owned()),
        )
            .into_response();
    }
    // Waiting: oldest first; ended: newest first — across stores as within one.
    approvals.items.sort_by_key(|p| p.item.row.updated_at);
    doubts.items.sort_by_key(|p| p.item.row.updated_at);
    failed
        .items
        .sort_by_key(|p| std::cmp::Reverse(p.item.row.updated_at));
    dead.items
        .sort_by_key(|p| std::cmp::Reverse(p.item.row.updated_at));
    let mut down: Vec<String> = [&approvals, &doubts, &failed, &dead]
        .iter()
        .flat_map(|g| g.unavailable.iter())
        .map(|u| u.split(':').next().unwrap_or(u).to_owned())
        .collect();
    down.sort_unstable();
    down.dedup();
    let (approvals, doubts, failed, dead) =
        (approvals.items, doubts.items, failed.items, dead.items);
    let mut html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>idem console</title>\
         <style>{STYLE}</style></head><body><h1>idem approver console</h1>\
         <p>Signed in as <b>{}</b>. <form method=post action=/console/logout><button>Sign out</button></form></p>",
        esc(&token.name)
    );
    if let Some(done) = flash.done {
        let _ = write!(html, "<p class=flash id=flash>{}</p>", esc(&done));
    }
    if !down.is_empty() {
        let _ = write!(
            html,
            "<p class=flash id=stores-down>Not listed: the actions on store(s) {}, which did not answer. \
             Everything else is.</p>",
            esc(&down.join(", "))
        );
    }
    html.push_str(&crate::explorer::counts(&state).await);
    let _ = write!(html, "<h2>Awaiting approval ({})</h2>", approvals.len());
    if approvals.is_empty() {
        html.push_str("<p class=none id=no-approvals>Nothing awaits approval.</p>");
    }
    for w in &approvals {
        item(&state, secret, &mut html, w, Kind::Approval).await;
    }
    let _ = write!(html, "<h2>Needs a person ({})</h2>", doubts.len());
    if doubts.is_empty() {
        html.push_str("<p class=none id=no-doubts>No open cases.</p>");
    }
    for w in &doubts {
        item(&state, secret, &mut html, w, Kind::Doubt).await;
    }
    let _ = write!(
        html,
        "<h2>Failed in the last {} days ({})</h2>\
         <p>The partner confirmed no effect (a refusal, or an outage longer than the cell's \
         budget). Sending again uses a fresh partner key.</p>",
        decisions::FAILED_WINDOW_DAYS,
        failed.len()
    );
    if failed.is_empty() {
        html.push_str("<p class=none id=no-failed>Nothing failed.</p>");
    }
    for w in &failed {
        item(&state, secret, &mut html, w, Kind::Failed).await;
    }
    let _ = write!(
        html,
        "<h2>Dead in the last {} days ({})</h2>\
         <p>Never sent: no worker runs the cell, or its cell refused the arguments. Once that \
         is fixed, sending again delivers it to a worker once more (it was never attempted). \
         Deliveries that could not become an action at all are under \
         <a href=/console/dead-letters>dead letters</a>.</p>",
        decisions::FAILED_WINDOW_DAYS,
        dead.len()
    );
    if dead.is_empty() {
        html.push_str("<p class=none id=no-dead>Nothing dead.</p>");
    }
    for w in &dead {
        item(&state, secret, &mut html, w, Kind::Failed).await;
    }
    html.push_str("</body></html>");
    Html(html).into_response()
}

/// One waiting action: what it is, what the cell is, what happened so far, and the forms.
async fn item(
    state: &ApiState,
    secret: &str,
    html: &mut String,
    placed: &Placed<Waiting>,
    kind: Kind,
) {
    let w = &placed.item;
    let r = &w.row;
    let id = r.action_id.to_string();
    let Some(home) = state.stores.get(&placed.store) else {
        return;
    };
    let pool = home.pool();
    let attempts = idem_store::attempts::load(pool, &[r.action_id.as_uuid()])
        .await
        .ok()
        .and_then(|mut m| m.remove(&r.action_id))
        .unwrap_or_default();
    let history = decisions::history(pool, r.action_id)
        .await
        .unwrap_or_default();
    let full = state.cells.get(&r.cell).and_then(|c| c.card_text());
    let summary = full
        .map(idem_cells::cards::summary)
        .unwrap_or("(no card for this cell on this server)");
    let _ = write!(
        html,
        "<section class=\"item {}\" id=\"action-{id}\" data-state=\"{}\">\
         <h3>{} <code>{id}</code></h3>\
         <p class=summary>{}</p>\
         <p>created {} by {} · {} attempt(s) · store <code class=store>{}</code>{}</p>{}\
         <h4>Arguments</h4><pre class=args>{}</pre>\
         <p>fingerprint <code>{}</code></p>\
         <h4>The cell</h4><div class=card>{}</div>",
        match kind {
            Kind::Approval => "approval",
            Kind::Doubt => "doubt",
            Kind::Failed => "failed",
        },
        esc(r.state.as_str()),
        esc(&r.cell),
        esc(&what_it_does(state, r)),
        r.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        submitter(r),
        r.attempts,
        esc(&placed.store),
        r.reason
            .as_deref()
            .map(|why| format!(" · <b>why:</b> {}", esc(why)))
            .unwrap_or_default(),
        match (kind, r.due_at) {
            (Kind::Approval, Some(due)) => format!(
                "<p class=expires>The approval expires at {} (then the action is rejected).</p>",
                due.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => String::new(),
        },
        esc(&serde_json::to_string_pretty(&r.args).unwrap_or_default()),
        esc(&w.fingerprint),
        markdown(summary),
    );
    if let Some(full) = full {
        let _ = write!(
            html,
            "<details><summary>Full card</summary><div class=card>{}</div></details>",
            markdown(full)
        );
    }
    html.push_str("<h4>Attempts</h4>");
    if attempts.is_empty() {
        html.push_str("<p class=none>No request has been sent.</p>");
    } else {
        html.push_str("<table><tr><th>#</th><th>key</th><th>rule</th><th>started</th><th>result</th><th>detail</th></tr>");
        for a in &attempts {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=wrap>{}</td></tr>",
                a.number,
                esc(a.idem_key.as_deref().unwrap_or("—")),
                esc(&a.rule),
                a.started_at.format("%H:%M:%S%.3f"),
                esc(a.result.as_deref().unwrap_or("no answer")),
                esc(&a.detail.as_ref().map(|d| d.to_string()).unwrap_or_default()),
            );
        }
        html.push_str("</table>");
    }
    if !history.is_empty() {
        html.push_str("<h4>Decisions</h4>");
        html.push_str(&decisions_list(&history));
    }
    let fp = esc(&w.fingerprint);
    let [csrf_resend, csrf_approve, csrf_reject, csrf_resolve] =
        ["resend", "approve", "reject", "resolve"]
            .map(|verb| csrf_token(secret, &format!("/console/actions/{id}/{verb}")));
    let has_lookup = state
        .cells
        .get(&r.cell)
        .is_some_and(|c| c.profile().lookup != idem_core::Lookup::None);
    if kind == Kind::Failed {
        let _ = write!(
            html,
            "<form method=post action=\"/console/actions/{id}/resend\"><input type=hidden name=csrf value=\"{csrf_resend}\">\
             <input type=text name=reason placeholder=\"why send it again\" required>\
             <button type=submit class=resend>Send again</button></form>"
        );
    } else if kind == Kind::Approval {
        // Each goes to a confirmation page that repeats what will happen; only its form
        // decides (and carries the form token).
        let _ = (csrf_approve, csrf_reject);
        let _ = write!(
            html,
            "<form method=get action=\"/console/actions/{id}/approve\">\
             <input type=hidden name=fingerprint value=\"{fp}\">\
             <input type=text name=reason placeholder=\"reason (optional)\">\
             <button type=submit class=approve>Approve…</button></form>\
             <form method=get action=\"/console/actions/{id}/reject\">\
             <input type=hidden name=fingerprint value=\"{fp}\">\
             <input type=text name=reason placeholder=\"reason (optional)\">\
             <button type=submit class=reject>Reject…</button></form>"
        );
    } else {
        if has_lookup {
            let _ = write!(
                html,
                "<form method=post action=\"/console/actions/{id}/resolve\"><input type=hidden name=csrf value=\"{csrf_resolve}\">\
                 <input type=hidden name=outcome value=recheck>\
                 <input type=text name=reason placeholder=\"why look again\" required>\
                 <button type=submit class=recheck>Check the partner again</button></form><br>"
            );
        }
        let _ = write!(
            html,
            "<form method=post action=\"/console/actions/{id}/resolve\"><input type=hidden name=csrf value=\"{csrf_resolve}\">\
             <input type=hidden name=outcome value=happened>\
             <input type=text name=partner_ref placeholder=\"partner reference\" required>\
             <input type=text name=reason placeholder=\"how you know\" required>\
             <button type=submit class=happened>It happened</button></form>\
             <form method=post action=\"/console/actions/{id}/resolve\"><input type=hidden name=csrf value=\"{csrf_resolve}\">\
             <input type=hidden name=outcome value=not_happened>\
             <input type=text name=reason placeholder=\"how you know\" required>\
             <button type=submit class=not-happened>It did not happen</button></form>\
             <form method=post action=\"/console/actions/{id}/resolve\"><input type=hidden name=csrf value=\"{csrf_resolve}\">\
             <input type=hidden name=outcome value=retry>\
             <input type=text name=reason placeholder=\"why it is safe to send again\" required>\
             <button type=submit class=retry>Send again</button></form>"
        );
    }
    html.push_str("</section>");
}

/// What people decided about an action (`idem_store::decisions::history`), as a list.
pub(crate) fn decisions_list(history: &[idem_store::decisions::Decided]) -> String {
    let mut html = String::from("<ul class=decisions>");
    for (kind, actor, reason, partner_ref, at) in history {
        let _ = write!(
            html,
            "<li>{} {} by {}{}{}</li>",
            at.format("%Y-%m-%d %H:%M:%S"),
            esc(kind),
            esc(actor),
            reason
                .as_deref()
                .map(|r| format!(": {}", esc(r)))
                .unwrap_or_default(),
            partner_ref
                .as_deref()
                .map(|p| format!(" (ref {})", esc(p)))
                .unwrap_or_default(),
        );
    }
    html.push_str("</ul>");
    html
}

/// Who submitted an action, escaped for HTML ("token:agent-7"; older actions: unknown).
pub(crate) fn submitter(r: &idem_store::ActionRow) -> String {
    format!(
        "<span class=submitter>{}</span>",
        esc(r
            .submitted_by
            .as_deref()
            .unwrap_or("unknown (not recorded)"))
    )
}

/// The cell's sentence for what the action will do ("Charge $600.00 USD to cus_big — …"),
/// or a plain fallback naming the cell when it has none.
pub(crate) fn what_it_does(state: &ApiState, r: &idem_store::ActionRow) -> String {
    state
        .cells
        .get(&r.cell)
        .and_then(|c| c.summary(&r.args))
        .unwrap_or_else(|| format!("{} (this cell has no summary: read the arguments)", r.cell))
}

/// A card's Markdown as HTML. Cards are compiled into idem, but raw HTML in them is still
/// shown as text, never passed through.
fn markdown(md: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser};
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        e => e,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

#[derive(Debug, Deserialize)]
struct ConfirmQuery {
    fingerprint: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn confirm_approve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ConfirmQuery>,
) -> Response {
    confirm(&state, &headers, &id, "approve", q).await
}

async fn confirm_reject(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ConfirmQuery>,
) -> Response {
    confirm(&state, &headers, &id, "reject", q).await
}

/// The page between a click on Approve… / Reject… and the decision: what will happen, in
/// words and in full, and the one form that decides.
async fn confirm(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    verb: &str,
    q: ConfirmQuery,
) -> Response {
    if let Err(r) = signed_in(state, headers).await {
        return r;
    }
    let Ok(action) = id.parse::<ActionId>() else {
        return (StatusCode::NOT_FOUND, Html("no such action".to_owned())).into_response();
    };
    let row = match state.stores.find(action).await {
        Ok(Some((_, r))) => r,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, Html("no such action".to_owned())).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "console confirmation failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Html("store unavailable".to_owned()),
            )
                .into_response();
        }
    };
    if row.state != idem_core::State::AwaitingApproval {
        return Redirect::to(&format!(
            "/console?done={}",
            url_escape(&format!(
                "{id} no longer awaits approval ({})",
                row.state.as_str()
            ))
        ))
        .into_response();
    }
    let csrf = csrf_token(
        cookie_secret(headers).unwrap_or_default(),
        &format!("/console/actions/{id}/{verb}"),
    );
    let (title, button) = match verb {
        "approve" => ("Approve", "Yes, approve: send it"),
        _ => ("Reject", "Yes, reject: never send it"),
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>idem console: {title}?</title>\
         <style>{STYLE}</style></head><body><h1>{title} this action?</h1>\
         <section class=\"item approval\" id=confirmation>\
         <p class=summary id=confirm-summary><b>{}</b></p>\
         <p>{} · action <code>{id}</code> · created {} by {}{}</p>\
         <h4>Arguments</h4><pre class=args>{}</pre>\
         <p>fingerprint <code>{}</code></p>\
         <form method=post action=\"/console/actions/{id}/{verb}\">\
         <input type=hidden name=csrf value=\"{csrf}\">\
         <input type=hidden name=fingerprint value=\"{}\">\
         <label>reason <input type=text name=reason value=\"{}\"></label> \
         <button type=submit id=confirm class={verb}>{button}</button></form> \
         <a href=/console id=cancel>Back, decide nothing</a></section></body></html>",
        esc(&what_it_does(state, &row)),
        esc(&row.cell),
        row.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        submitter(&row),
        row.reason
            .as_deref()
            .map(|why| format!(" · <b>held because:</b> {}", esc(why)))
            .unwrap_or_default(),
        esc(&serde_json::to_string_pretty(&row.args).unwrap_or_default()),
        esc(&q.fingerprint),
        esc(&q.fingerprint),
        esc(q.reason.as_deref().unwrap_or("")),
    );
    Html(html).into_response()
}

/// The form token for `action` (a form's path) in the session of `secret`: SHA-256 of both,
/// so it cannot be made without the HttpOnly cookie and does not fit another form.
pub(crate) fn csrf_token(secret: &str, action: &str) -> String {
    idem_core::canonical::sha256_hex(format!("idem.console.csrf.v1\0{secret}\0{action}").as_bytes())
}

/// Equal without an early exit, so timing does not tell how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The signed-in person (as the audit names them) and the action a form is about, once
/// the form's token matches this session and this form (`verb`).
async fn form_request(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    verb: &str,
    csrf: &str,
) -> Result<(String, ActionId), Response> {
    let who = form_session(
        state,
        headers,
        &format!("/console/actions/{id}/{verb}"),
        csrf,
    )
    .await?;
    let id = id.parse::<uuid::Uuid>().map(ActionId::from).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            Html("action id must be a UUID".to_owned()),
        )
            .into_response()
    })?;
    Ok((who, id))
}

/// The signed-in person, as the audit names them, once a form's token matches this session
/// and the form at `path`.
pub(crate) async fn form_session(
    state: &ApiState,
    headers: &HeaderMap,
    path: &str,
    csrf: &str,
) -> Result<String, Response> {
    let token = signed_in(state, headers).await?;
    let want = csrf_token(cookie_secret(headers).unwrap_or_default(), path);
    if !same(csrf, &want) {
        return Err((
            StatusCode::FORBIDDEN,
            Html("this form's token does not match your session: reload the console and decide again".to_owned()),
        )
            .into_response());
    }
    Ok(format!("console:{}", token.name))
}

/// After a decision: back to the page with what was done, or the refusal as a page.
pub(crate) fn after(result: Result<String, Response>) -> Response {
    match result {
        Ok(done) => {
            let q: String = url_escape(&done);
            Redirect::to(&format!("/console?done={q}")).into_response()
        }
        Err(r) => r,
    }
}

pub(crate) fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".into(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct DecisionForm {
    csrf: String,
    fingerprint: String,
    reason: Option<String>,
}

async fn decide(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    approve: bool,
    f: DecisionForm,
) -> Response {
    let form = if approve { "approve" } else { "reject" };
    let (who, id) = match form_request(&state, &headers, &id, form, &f.csrf).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let d = Decision {
        fingerprint: f.fingerprint,
        reason: f.reason.filter(|r| !r.trim().is_empty()),
    };
    let verb = if approve { "approved" } else { "rejected" };
    after(
        record_decision(&state, &who, id, approve, &d)
            .await
            .map(|()| format!("{id} {verb}")),
    )
}

async fn approve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Response {
    decide(state, headers, id, true, f).await
}

async fn reject(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Response {
    decide(state, headers, id, false, f).await
}

#[derive(Debug, Deserialize)]
struct ResolveForm {
    csrf: String,
    outcome: String,
    partner_ref: Option<String>,
    reason: String,
}

async fn resolve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ResolveForm>,
) -> Response {
    let (who, id) = match form_request(&state, &headers, &id, "resolve", &f.csrf).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let r = match f.outcome.as_str() {
        "happened" => Resolve::Happened {
            partner_ref: f.partner_ref.unwrap_or_default(),
            reason: f.reason,
        },
        "not_happened" => Resolve::NotHappened { reason: f.reason },
        "retry" => Resolve::Retry { reason: f.reason },
        "recheck" => Resolve::Recheck { reason: f.reason },
        other => {
            return (
                StatusCode::BAD_REQUEST,
                Html(format!("unknown outcome {}", esc(other))),
            )
                .into_response()
        }
    };
    after(
        resolve_case(&state, &who, id, r)
            .await
            .map(|to| format!("{id} resolved: {to}")),
    )
}

#[derive(Debug, Deserialize)]
struct ResendForm {
    csrf: String,
    reason: String,
}

async fn resend(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ResendForm>,
) -> Response {
    let (who, id) = match form_request(&state, &headers, &id, "resend", &f.csrf).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    after(
        resend_action(&state, &who, id, f.reason)
            .await
            .map(|to| format!("{id} sent again: {to}")),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn reads_the_cookie_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("cookie", "a=1; idem_console=idem_abc; b=2".parse().unwrap());
        assert_eq!(super::cookie_secret(&h), Some("idem_abc"));
    }
}
