//! The console's action explorer: find an action by id, named intent, cell, state or age;
//! read its arguments, attempts, transitions (who and why), receipt and trace; list dead
//! letters with their raw bytes and where they came from; and the fleet's live counts.
//! Server-rendered, behind the console's sign-in, read-only (a dead letter's replay is a
//! decision: `console_replay`).

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use idem_core::ActionId;
use idem_store::explore::{self, Filter};
use serde::Deserialize;

use crate::console::{esc, signed_in, STYLE};
use crate::ApiState;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/console/explore", get(search))
        .route("/console/explore/{id}", get(detail))
        .route("/console/dead-letters", get(dead_letters))
}

fn page(title: &str, body: &str) -> Response {
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>idem console: {}</title>\
         <style>{STYLE}</style></head><body>\
         <p><a href=/console>Approvals and cases</a> · <a href=/console/explore>Find an action</a> · \
         <a href=/console/dead-letters>Dead letters</a></p>{body}</body></html>",
        esc(title)
    ))
    .into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console explorer read failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html("store unavailable".to_owned()),
    )
        .into_response()
}

/// The fleet's live counts and the explorer's links, for the top of the console.
pub(crate) async fn counts(state: &ApiState) -> String {
    let (Some(fleet), down) = state.stores.fleet().await else {
        return "<p class=none>Live counts unavailable.</p>".into();
    };
    let partial = if down.is_empty() {
        String::new()
    } else {
        " (stores that did not answer are not counted)".to_owned()
    };
    let count = |s: &str| -> u64 {
        fleet
            .actions
            .iter()
            .filter(|(_, st, _)| st == s)
            .map(|(_, _, n)| n)
            .sum()
    };
    format!(
        "<p id=counts>in doubt <b>{}</b> · needs a person <b>{}</b> · awaiting approval <b>{}</b> · \
         executing <b>{}</b> · outbox <b>{}</b> waiting (oldest {:.0} s){partial}</p>\
         <p><a href=/console/explore id=explore>Find an action</a> · \
         <a href=/console/dead-letters id=dead-letters>Dead letters</a></p>",
        count("in_doubt"),
        count("needs_human"),
        count("awaiting_approval"),
        count("executing"),
        fleet.outbox_depth,
        fleet.outbox_lag_seconds
    )
}

/// The search form's fields; empty ones are not filters.
#[derive(Debug, Default, Deserialize)]
struct Search {
    id: Option<String>,
    scope: Option<String>,
    intent: Option<String>,
    cell: Option<String>,
    state: Option<String>,
    /// Only actions created in the last N hours.
    hours: Option<String>,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl Search {
    /// The filter, or what is wrong with a field (shown above the form).
    fn filter(&self) -> Result<Filter, String> {
        let id = match given(&self.id) {
            Some(s) => Some(
                s.parse::<ActionId>()
                    .map_err(|_| format!("id: {s:?} is not an action id (a UUID)"))?,
            ),
            None => None,
        };
        let state = match given(&self.state) {
            Some(s) => Some(
                s.parse::<idem_core::State>()
                    .map_err(|_| format!("state: {s:?} is not a state"))?,
            ),
            None => None,
        };
        let since = match given(&self.hours) {
            Some(h) => {
                let h: u32 = h
                    .parse()
                    .map_err(|_| format!("hours: {h:?} is not a whole number"))?;
                Some(chrono::Utc::now() - chrono::Duration::hours(i64::from(h)))
            }
            None => None,
        };
        Ok(Filter {
            id,
            scope: given(&self.scope),
            intent: given(&self.intent),
            cell: given(&self.cell),
            state,
            since,
            limit: 100,
        })
    }
}

async fn search(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<Search>,
) -> Response {
    if let Err(r) = signed_in(&state, &headers).await {
        return r;
    }
    let field = |name: &str, label: &str, v: &Option<String>| {
        format!(
            "<label>{label} <input type=text name={name} id=q-{name} value=\"{}\"></label> ",
            esc(v.as_deref().unwrap_or(""))
        )
    };
    let states: String = idem_core::State::ALL
        .iter()
        .map(|s| {
            let on = given(&q.state).as_deref() == Some(s.as_str());
            format!(
                "<option{}>{}</option>",
                if on { " selected" } else { "" },
                s.as_str()
            )
        })
        .collect();
    let mut body = format!(
        "<h1>Find an action</h1><form method=get action=/console/explore id=search>{}{}{}{}\
         <label>state <select name=state id=q-state><option value=\"\">any</option>{states}</select></label> {}\
         <button type=submit id=find>Find</button></form>",
        field("id", "action id", &q.id),
        field("scope", "intent scope", &q.scope),
        field("intent", "intent", &q.intent),
        field("cell", "cell", &q.cell),
        field("hours", "created in the last N hours", &q.hours),
    );
    let filter = match q.filter() {
        Ok(f) => f,
        Err(why) => {
            let _ = write!(body, "<p class=flash id=refused>{}</p>", esc(&why));
            return (StatusCode::BAD_REQUEST, page("find an action", &body)).into_response();
        }
    };
    let limit = filter.limit.max(1) as usize;
    let mut g = state
        .stores
        .gather(move |pool| {
            let filter = filter.clone();
            async move { explore::search(&pool, &filter).await }
        })
        .await;
    if g.all_down() {
        return unavailable(g.unavailable.join("; "));
    }
    g.items
        .sort_by_key(|p| std::cmp::Reverse(p.item.row.created_at));
    g.items.truncate(limit);
    if !g.unavailable.is_empty() {
        let names: Vec<&str> = g
            .unavailable
            .iter()
            .map(|u| u.split(':').next().unwrap_or(u))
            .collect();
        let _ = write!(
            body,
            "<p class=flash id=stores-down>Not searched: store(s) {}, which did not answer.</p>",
            esc(&names.join(", "))
        );
    }
    let found = g.items;
    let _ = write!(
        body,
        "<h2>{} found (newest first, at most 100)</h2>",
        found.len()
    );
    if found.is_empty() {
        body.push_str("<p class=none id=none-found>No action matches.</p>");
    } else {
        body.push_str(
            "<table id=results><tr><th>action</th><th>store</th><th>cell</th><th>state</th><th>created</th><th>intent</th><th>what</th></tr>",
        );
        for p in &found {
            let f = &p.item;
            let r = &f.row;
            let _ = write!(
                body,
                "<tr><td><a href=/console/explore/{id} class=found>{id}</a></td><td class=store>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.store),
                esc(&r.cell),
                esc(r.state.as_str()),
                r.created_at.format("%Y-%m-%d %H:%M:%S"),
                match (&f.scope, &f.intent) {
                    (Some(s), Some(i)) => format!("{} / {}", esc(s), esc(i)),
                    _ => "—".into(),
                },
                esc(&crate::console::what_it_does(&state, r)),
                id = r.action_id,
            );
        }
        body.push_str("</table>");
    }
    page("find an action", &body)
}

async fn detail(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = signed_in(&state, &headers).await {
        return r;
    }
    let Ok(action) = id.parse::<ActionId>() else {
        return (
            StatusCode::BAD_REQUEST,
            page("action", "<p>The action id must be a UUID.</p>"),
        )
            .into_response();
    };
    let (store_name, home) = match state.stores.locate(action).await {
        Ok(Some((n, s))) => (n.to_owned(), s.clone()),
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                page("action", "<p id=not-found>No such action.</p>"),
            )
                .into_response()
        }
        Err(e) => return unavailable(e),
    };
    let pool = home.pool();
    let filter = Filter {
        id: Some(action),
        limit: 1,
        ..Filter::default()
    };
    let ids = [action.as_uuid()];
    let (found, attempts, transitions, decisions) = match tokio::try_join!(
        explore::search(pool, &filter),
        idem_store::attempts::load(pool, &ids),
        explore::transitions(pool, action),
        idem_store::decisions::history(pool, action),
    ) {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    let Some(f) = found.into_iter().next() else {
        return (
            StatusCode::NOT_FOUND,
            page("action", "<p id=not-found>No such action.</p>"),
        )
            .into_response();
    };
    let r = &f.row;
    let mut body = format!(
        "<h1>{} <code>{}</code></h1><section class=item id=detail data-state=\"{}\">\
         <p class=summary>{}</p>\
         <p>state <b id=state>{}</b>{} · created {} by {} · updated {}{}</p>\
         <p>intent {} · ordering key <code>{}</code> · trace {} · store <code id=store>{}</code></p>\
         <h4>Arguments</h4><pre class=args>{}</pre>\
         <h4>Receipt</h4><pre id=receipt>{}</pre>",
        esc(&r.cell),
        r.action_id,
        esc(r.state.as_str()),
        esc(&crate::console::what_it_does(&state, r)),
        esc(r.state.as_str()),
        r.reason
            .as_deref()
            .map(|w| format!(" — {}", esc(w)))
            .unwrap_or_default(),
        r.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        crate::console::submitter(r),
        r.updated_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        r.settled_at
            .map(|t| format!(" · settled {}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")))
            .unwrap_or_default(),
        match (&f.scope, &f.intent) {
            (Some(s), Some(i)) => format!("<code>{}</code> / <code>{}</code>", esc(s), esc(i)),
            _ => "none (an id given by the caller)".into(),
        },
        esc(&r.ordering_key),
        r.trace
            .get(idem_telemetry::TRACEPARENT)
            .map(|t| format!("<code id=trace>{}</code>", esc(t)))
            .unwrap_or_else(|| "none recorded".into()),
        esc(&store_name),
        esc(&serde_json::to_string_pretty(&r.args).unwrap_or_default()),
        esc(&r
            .receipt
            .as_ref()
            .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
            .unwrap_or_else(|| "none yet".into())),
    );
    body.push_str("<h4>Attempts</h4>");
    let attempts = attempts.get(&action).cloned().unwrap_or_default();
    if attempts.is_empty() {
        body.push_str("<p class=none>No request has been sent.</p>");
    } else {
        body.push_str("<table id=attempts><tr><th>#</th><th>key</th><th>request fingerprint</th><th>rule</th><th>worker</th><th>started</th><th>took</th><th>result</th><th>detail</th></tr>");
        for a in &attempts {
            let took = a
                .finished_at
                .map(|f| format!("{} ms", (f - a.started_at).num_milliseconds()))
                .unwrap_or_else(|| "—".into());
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{took}</td><td>{}</td><td class=wrap>{}</td></tr>",
                a.number,
                esc(a.idem_key.as_deref().unwrap_or("—")),
                esc(a.request_fingerprint.get(..16).unwrap_or(&a.request_fingerprint)),
                esc(&a.rule),
                esc(&a.worker),
                a.started_at.format("%H:%M:%S%.3f"),
                esc(a.result.as_deref().unwrap_or("no answer")),
                esc(&a.detail.as_ref().map(|d| d.to_string()).unwrap_or_default()),
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<h4>Transitions</h4><table id=transitions><tr><th>at</th><th>from</th><th>to</th><th>event</th><th>by</th><th>why</th></tr>");
    for t in &transitions {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.at.format("%H:%M:%S%.3f"),
            esc(&t.from_state),
            esc(&t.to_state),
            esc(&t.event),
            esc(&t.actor),
            esc(t.reason.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    if !decisions.is_empty() {
        body.push_str("<h4>Decisions by people</h4>");
        body.push_str(&crate::console::decisions_list(&decisions));
    }
    body.push_str("</section>");
    page(&format!("action {id}"), &body)
}

async fn dead_letters(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = signed_in(&state, &headers).await {
        return r;
    }
    let mut g = state
        .stores
        .gather(|pool| async move { explore::dead_letters(&pool, 100).await })
        .await;
    if g.all_down() {
        return unavailable(g.unavailable.join("; "));
    }
    g.items.sort_by_key(|p| std::cmp::Reverse(p.item.at));
    g.items.truncate(100);
    let several = state.stores.len() > 1;
    let letters = g.items;
    let mut body = format!(
        "<h1>Dead letters</h1><p>Deliveries that could not become an action (undecodable, an \
         unknown cell, an id reused with other arguments), kept with their raw bytes. Newest \
         first, at most 100; {} shown.</p>",
        letters.len()
    );
    if letters.is_empty() {
        body.push_str("<p class=none id=no-dead-letters>No dead letters.</p>");
    }
    for p in &letters {
        let l = &p.item;
        // Ids are per store; the default store's need no `?store=` (as with one store).
        let on = if p.store
            == state
                .stores
                .iter()
                .next()
                .map(|(n, _)| n)
                .unwrap_or_default()
        {
            String::new()
        } else {
            format!("?store={}", crate::console::url_escape(&p.store))
        };
        let raw = crate::console_replay::raw_for_people(&l.raw);
        let replay = match (&l.replayed_at, &l.replayed_by) {
            (Some(at), by) => format!(
                "<p class=replayed>replayed by {} at {}: {}</p>",
                esc(by.as_deref().unwrap_or("?")),
                at.format("%Y-%m-%d %H:%M:%S UTC"),
                esc(l.replay_reason.as_deref().unwrap_or(""))
            ),
            _ => format!(
                "<p><a href=\"/console/dead-letters/{0}/replay{on}\" id=replay-{0}>Replay…</a></p>",
                l.id
            ),
        };
        let _ = write!(
            body,
            "<section class=\"item failed dead-letter\" id=\"dead-{}\"><p><b>{}</b> · {} · action {}</p>\
             <p>from <code>{}</code>{}</p><pre class=raw>{raw}</pre>{replay}</section>",
            l.id,
            esc(&l.reason),
            l.at.format("%Y-%m-%d %H:%M:%S UTC"),
            l.action_id
                .map(|a| format!("<a href=/console/explore/{a}>{a}</a>"))
                .unwrap_or_else(|| "unknown".into()),
            esc(&l.source.to_string()),
            if several {
                format!(" · store <code class=store>{}</code>", esc(&p.store))
            } else {
                String::new()
            },
        );
    }
    page("dead letters", &body)
}
