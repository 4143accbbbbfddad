//! Inbox rows and compare-and-set transitions, applied in batches.

use chrono::{DateTime, Utc};
use idem_core::{transition, ActionId, Event, State, TransitionError};
use idem_telemetry::TraceHeaders;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::attempts::{AttemptOutcome, NewAttempt};
use crate::StoreError;

/// One inbox row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionRow {
    pub action_id: ActionId,
    pub cell: String,
    pub args: serde_json::Value,
    pub ordering_key: String,
    pub state: State,
    pub attempts: u32,
    pub key_generation: u32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub doubt_since: Option<DateTime<Utc>>,
    pub reconcile_rounds: u32,
    pub reason: Option<String>,
    pub receipt: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
    /// Who submitted it: "token:NAME" through the API or MCP, "role:NAME" for a SQL caller
    /// that gave no name. None for actions enqueued before this was recorded.
    pub submitted_by: Option<String>,
    /// Trace context of the enqueuing span, so later hops continue the agent's trace.
    #[serde(skip_serializing_if = "TraceHeaders::is_empty")]
    pub trace: TraceHeaders,
}

#[derive(sqlx::FromRow)]
pub(crate) struct RawRow {
    action_id: Uuid,
    cell: String,
    args: serde_json::Value,
    ordering_key: String,
    state: String,
    attempts: i32,
    key_generation: i32,
    lease_owner: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    due_at: Option<DateTime<Utc>>,
    doubt_since: Option<DateTime<Utc>>,
    reconcile_rounds: i32,
    reason: Option<String>,
    receipt: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    settled_at: Option<DateTime<Utc>>,
    submitted_by: Option<String>,
    trace: Option<serde_json::Value>,
}

pub(crate) const COLUMNS: &str =
    "action_id, cell, args, ordering_key, state, attempts, key_generation, \
     lease_owner, lease_until, due_at, doubt_since, reconcile_rounds, reason, receipt, \
     created_at, updated_at, settled_at, submitted_by, trace";

impl TryFrom<RawRow> for ActionRow {
    type Error = StoreError;
    fn try_from(r: RawRow) -> Result<Self, StoreError> {
        let action_id = ActionId(r.action_id);
        Ok(Self {
            action_id,
            state: r
                .state
                .parse()
                .map_err(|e: idem_core::state::UnknownState| StoreError::Corrupt {
                    action_id,
                    detail: e.to_string(),
                })?,
            cell: r.cell,
            args: r.args,
            ordering_key: r.ordering_key,
            attempts: r.attempts.max(0) as u32,
            key_generation: r.key_generation.max(0) as u32,
            lease_owner: r.lease_owner,
            lease_until: r.lease_until,
            due_at: r.due_at,
            doubt_since: r.doubt_since,
            reconcile_rounds: r.reconcile_rounds.max(0) as u32,
            reason: r.reason,
            receipt: r.receipt,
            created_at: r.created_at,
            updated_at: r.updated_at,
            settled_at: r.settled_at,
            submitted_by: r.submitted_by,
            trace: r
                .trace
                .as_ref()
                .map(TraceHeaders::from_json)
                .unwrap_or_default(),
        })
    }
}

/// Read one action.
pub async fn get<'e, E: PgExecutor<'e>>(
    executor: E,
    id: ActionId,
) -> Result<Option<ActionRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM idem.actions WHERE action_id = $1");
    let row: Option<RawRow> = sqlx::query_as(&sql)
        .bind(id.as_uuid())
        .fetch_optional(executor)
        .await?;
    row.map(ActionRow::try_from).transpose()
}

/// The scope that named an action: `None` if there is no such action, `Some(None)` if its
/// id was chosen by the caller. Tokens bound to a scope prefix read only inside it.
pub async fn intent_scope<'e, E: PgExecutor<'e>>(
    executor: E,
    id: ActionId,
) -> Result<Option<Option<String>>, StoreError> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT intent_scope FROM idem.actions WHERE action_id = $1")
            .bind(id.as_uuid())
            .fetch_optional(executor)
            .await?;
    Ok(row.map(|r| r.0))
}

/// Lock the given actions for the rest of the transaction (waiting for any other holder:
/// a concurrent delivery of the same action sees the state the winner committed).
pub async fn lock(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<ActionRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM idem.actions WHERE action_id = ANY($1) ORDER BY action_id FOR UPDATE"
    );
    let rows: Vec<RawRow> = sqlx::query_as(&sql)
        .persistent(false)
        .bind(ids)
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(ActionRow::try_from).collect()
}

/// A compare-and-set transition of one action, built from the row it was read as.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub action_id: ActionId,
    /// Guard: the state and attempt number the row must still have.
    pub from: State,
    pub expected_attempts: u32,
    pub event: Event,
    pub to: State,
    pub attempts: u32,
    pub key_generation: u32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub doubt_since: Option<DateTime<Utc>>,
    pub reconcile_rounds: u32,
    pub reason: Option<String>,
    pub receipt: Option<serde_json::Value>,
}

impl Change {
    /// The change `event` makes to `row`, with the target state from the core state machine.
    /// Leases are cleared outside `executing`, due times outside the waiting states, and
    /// `doubt_since` is stamped on entering `in_doubt`.
    pub fn new(row: &ActionRow, event: Event, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        let to = transition(row.state, event)?;
        let doubt_since = match (row.state, to) {
            (State::InDoubt, State::InDoubt) => row.doubt_since,
            (_, State::InDoubt) => Some(now),
            _ => None,
        };
        Ok(Self {
            action_id: row.action_id,
            from: row.state,
            expected_attempts: row.attempts,
            event,
            to,
            attempts: row.attempts,
            key_generation: row.key_generation,
            lease_owner: None,
            lease_until: None,
            due_at: None,
            doubt_since,
            reconcile_rounds: row.reconcile_rounds,
            reason: None,
            receipt: None,
        })
    }

    pub fn reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    pub fn due(mut self, at: Option<DateTime<Utc>>) -> Self {
        self.due_at = at;
        self
    }
}

/// The changes [`apply`] made (it derefs to their action ids). Call [`Applied::record`]
/// once the transaction has committed, so the metrics count only what happened.
#[derive(Debug, Default)]
#[must_use = "call .record() after the commit so the metrics see the transitions"]
pub struct Applied {
    ids: Vec<ActionId>,
    /// (cell, from, to, event) per applied change.
    transitions: Vec<[String; 4]>,
}

impl std::ops::Deref for Applied {
    type Target = Vec<ActionId>;
    fn deref(&self) -> &Self::Target {
        &self.ids
    }
}

impl Applied {
    /// Count the committed transitions in the metrics.
    pub fn record(&self) {
        use idem_telemetry::metrics;
        for [cell, from, to, event] in &self.transitions {
            metrics::transition(cell, from, to, event);
            if event == "reconciled_happened" {
                // Found done at the partner: not sent again.
                metrics::duplicate_suppressed(metrics::Layer::Reconcile, 1);
            }
        }
    }
}

/// Attempt rows written by the same statement as a batch of compare-and-sets, so that a
/// claim or a settle is one statement, not three.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttemptWrites<'a> {
    /// Written ahead: each is inserted only if its action's change applies and takes the
    /// action to this attempt number.
    pub start: &'a [NewAttempt],
    /// Classified results, recorded whether or not their action's change applies (an
    /// outcome that arrives after the action moved on is kept in its attempt row).
    pub finish: &'a [AttemptOutcome],
}

/// Apply changes as compare-and-sets in one statement, auditing each applied one. Returns
/// the ids that were applied; a change whose guard no longer holds is skipped (someone
/// else moved the action first).
pub async fn apply(
    conn: &mut PgConnection,
    changes: &[Change],
    actor: &str,
) -> Result<Applied, StoreError> {
    apply_with(conn, changes, AttemptWrites::default(), actor).await
}

/// [`apply`], writing `attempts` in the same statement (one round trip, one plan). Runs as
/// its own transaction when `conn` is outside one: the statement is atomic either way.
pub async fn apply_with(
    conn: &mut PgConnection,
    changes: &[Change],
    attempts: AttemptWrites<'_>,
    actor: &str,
) -> Result<Applied, StoreError> {
    if changes.is_empty() && attempts.finish.is_empty() {
        return Ok(Applied::default());
    }
    let start = crate::attempts::StartColumns::of(attempts.start);
    let finish = crate::attempts::FinishColumns::of(attempts.finish);
    let mut ids = Vec::with_capacity(changes.len());
    let mut from = Vec::with_capacity(changes.len());
    let mut expected = Vec::with_capacity(changes.len());
    let mut event = Vec::with_capacity(changes.len());
    let mut to = Vec::with_capacity(changes.len());
    let mut attempts = Vec::with_capacity(changes.len());
    let mut generation = Vec::with_capacity(changes.len());
    let mut owner = Vec::with_capacity(changes.len());
    let mut lease = Vec::with_capacity(changes.len());
    let mut due = Vec::with_capacity(changes.len());
    let mut doubt = Vec::with_capacity(changes.len());
    let mut rounds = Vec::with_capacity(changes.len());
    let mut reason = Vec::with_capacity(changes.len());
    let mut receipt = Vec::with_capacity(changes.len());
    let mut settled = Vec::with_capacity(changes.len());
    for c in changes {
        ids.push(c.action_id.as_uuid());
        from.push(c.from.as_str());
        expected.push(c.expected_attempts as i32);
        event.push(
            serde_json::to_value(c.event)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
        to.push(c.to.as_str());
        attempts.push(c.attempts as i32);
        generation.push(c.key_generation as i32);
        owner.push(c.lease_owner.clone());
        lease.push(c.lease_until);
        due.push(c.due_at);
        doubt.push(c.doubt_since);
        rounds.push(c.reconcile_rounds as i32);
        reason.push(c.reason.clone());
        receipt.push(c.receipt.clone());
        settled.push(c.to.is_settled());
    }
    // Each finished attempt's change, by its 1-based place in the change arrays.
    let place: std::collections::HashMap<(Uuid, i32), i32> = ids
        .iter()
        .zip(&attempts)
        .enumerate()
        .map(|(i, (id, n))| ((*id, *n), i as i32 + 1))
        .collect();
    let finish_ix: Vec<Option<i32>> = finish
        .ids
        .iter()
        .zip(&finish.numbers)
        .map(|(id, n)| place.get(&(*id, *n)).copied())
        .collect();
    let (has_start, has_finish) = (!start.ids.is_empty(), !finish.ids.is_empty());
    let sql = apply_sql(has_start, has_finish);
    // Prepared, re-prepared now and then: see the crate docs, "Plans".
    #[allow(clippy::type_complexity)]
    let mut query = sqlx::query_as::<_, (Uuid, String, String, String, String, Option<i32>)>(sql)
        .bind(&ids)
        .bind(&from)
        .bind(&expected)
        .bind(&event)
        .bind(&to)
        .bind(&attempts)
        .bind(&generation)
        .bind(&owner)
        .bind(&lease)
        .bind(&due)
        .bind(&doubt)
        .bind(&rounds)
        .bind(&reason)
        .bind(&receipt)
        .bind(&settled)
        .bind(actor);
    if has_start {
        query = query
            .bind(&start.ids)
            .bind(&start.numbers)
            .bind(&start.generations)
            .bind(&start.keys)
            .bind(&start.fingerprints)
            .bind(&start.rules)
            .bind(&start.pre_states)
            .bind(&start.workers)
            .bind(&start.started_at);
    }
    if has_finish {
        query = query
            .bind(&finish.ids)
            .bind(&finish.numbers)
            .bind(&finish.results)
            .bind(&finish.details)
            .bind(&finish_ix);
    }
    let applied = query.fetch_all(conn).await?;
    let mut out = Applied::default();
    for (id, cell, from, to, event, _) in applied {
        out.ids.push(ActionId(id));
        out.transitions.push([cell, from, to, event]);
    }
    Ok(out)
}

/// The apply statement for a batch that starts attempts (`start`), finishes them
/// (`finish`), both or neither: a CTE for attempts that are not written costs its setup on
/// every call (the executor's start was a tenth of PostgreSQL's time in `bench pg-worker`,
/// each data-modifying CTE a share of it), so each kind of batch has its own statement.
/// Parameters: $1–$16 the changes and the actor, then the start's nine arrays (if any),
/// then the finish's five.
fn apply_sql(start: bool, finish: bool) -> &'static str {
    static SQL: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        [(false, false), (true, false), (false, true), (true, true)]
            .map(|(s, f)| build_apply_sql(s, f))
    });
    &all[usize::from(start) + 2 * usize::from(finish)]
}

fn build_apply_sql(start: bool, finish: bool) -> String {
    const HEAD: &str = r#"
        WITH v AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[],
                                 $6::int4[], $7::int4[], $8::text[], $9::timestamptz[],
                                 $10::timestamptz[], $11::timestamptz[], $12::int4[],
                                 $13::text[], $14::jsonb[], $15::bool[])
                AS v(id, from_state, expected, event, to_state, attempts, generation, owner,
                     lease_until, due_at, doubt_since, rounds, reason, receipt, settled)
        ), upd AS (
            UPDATE idem.actions a SET
                state = v.to_state,
                attempts = v.attempts,
                key_generation = v.generation,
                lease_owner = v.owner,
                lease_until = v.lease_until,
                due_at = v.due_at,
                doubt_since = v.doubt_since,
                reconcile_rounds = v.rounds,
                reason = coalesce(v.reason, CASE WHEN v.settled THEN a.reason END),
                receipt = coalesce(v.receipt, a.receipt),
                settled_at = CASE WHEN v.settled THEN now() END,
                updated_at = now()
            FROM v
            WHERE a.action_id = v.id AND a.state = v.from_state AND a.attempts = v.expected
            RETURNING a.action_id, a.cell, a.attempts, v.from_state, v.to_state, v.event,
                      v.reason, a.reason AS final_reason, a.receipt
        "#;
    const STARTED: &str = r#"), started AS (
            -- The attempt carries its start's transition (migration 0017).
            INSERT INTO idem.attempts (action_id, number, key_generation, idem_key,
                request_fingerprint, rule, pre_state, worker, started_at,
                audit_id, from_state, to_state, event, actor, reason, at)
            SELECT n.*, nextval('idem.transition_log_id_seq'), upd.from_state, upd.to_state,
                   upd.event, $16, upd.reason, now()
            FROM unnest($17::uuid[], $18::int4[], $19::int4[], $20::text[],
                        $21::text[], $22::text[], $23::jsonb[], $24::text[],
                        $25::timestamptz[])
                AS n(id, number, generation, key, fp, rule, pre, worker, started_at)
            JOIN upd ON upd.action_id = n.id AND upd.attempts = n.number
            RETURNING action_id
        "#;
    const FINISHED: &str = r#"), finished AS (
            -- An attempt settled together with its action's transition carries that
            -- transition (migration 0019): f.ix is the change's place in $1–$15, applied
            -- says its compare-and-set held. A hashed lookup in upd, not a join: joined,
            -- PostgreSQL scanned upd once per attempt (estimated one row each side), half
            -- the statement's time at 64 a batch.
            UPDATE idem.attempts t SET result = f.result, detail = f.detail, finished_at = now(),
                settle_audit_id = CASE WHEN f.applied
                                       THEN nextval('idem.transition_log_id_seq') END,
                settle_from = CASE WHEN f.applied THEN ($2::text[])[f.ix] END,
                settle_to = CASE WHEN f.applied THEN ($5::text[])[f.ix] END,
                settle_event = CASE WHEN f.applied THEN ($4::text[])[f.ix] END,
                settle_actor = CASE WHEN f.applied THEN $16 END,
                settle_reason = CASE WHEN f.applied THEN ($13::text[])[f.ix] END
            FROM (SELECT f.*, f.ix IS NOT NULL AND f.id IN (SELECT action_id FROM upd) AS applied
                  FROM unnest(${f0}::uuid[], ${f1}::int4[], ${f2}::text[], ${f3}::jsonb[],
                              ${f4}::int4[])
                      AS f(id, number, result, detail, ix)) f
            WHERE t.action_id = f.id AND t.number = f.number
              AND (t.result IS NULL OR (t.result = 'lease_expired' AND f.result = 'succeeded'))
              AND t.settle_audit_id IS NULL
            RETURNING CASE WHEN f.applied THEN f.id END AS action_id
        "#;
    const TAIL: &str = r#"), results AS (
            INSERT INTO idem.results_outbox (action_id, payload)
            SELECT upd.action_id, convert_to(jsonb_build_object(
                       'v', 1, 'action_id', upd.action_id, 'state', upd.to_state,
                       'reason', upd.final_reason, 'receipt', upd.receipt)::text, 'UTF8')
            FROM upd
            WHERE upd.to_state IN ('succeeded','failed','rejected','needs_human','dead')
              AND (SELECT publish_results FROM idem.settings)
        )
        SELECT action_id, cell, from_state, to_state, event,
               CASE WHEN to_state IN ('succeeded','failed','rejected','needs_human','dead')
                    THEN (SELECT 1 FROM pg_notify('idem_settled', action_id::text)) END
        FROM upd
        "#;
    let mut sql = String::from(HEAD);
    if start {
        sql.push_str(STARTED);
    }
    if finish {
        let first = if start { 26 } else { 17 };
        let mut f = FINISHED.to_owned();
        for k in 0..5 {
            f = f.replace(&format!("${{f{k}}}"), &format!("${}", first + k));
        }
        sql.push_str(&f);
    }
    // Audit rows for applied changes whose transition no attempt row carries.
    let mut unaudited = vec![];
    if start {
        unaudited.push("action_id NOT IN (SELECT action_id FROM started)");
    }
    if finish {
        unaudited
            .push("action_id NOT IN (SELECT action_id FROM finished WHERE action_id IS NOT NULL)");
    }
    sql.push_str(
        "), audit AS (\n            INSERT INTO idem.transition_log (action_id, from_state, to_state, event, actor, reason)\n            SELECT action_id, from_state, to_state, event, $16, reason FROM upd",
    );
    if !unaudited.is_empty() {
        sql.push_str("\n            WHERE ");
        sql.push_str(&unaudited.join("\n              AND "));
    }
    sql.push_str("\n        ");
    sql.push_str(TAIL);
    sql
}

/// Wait until `id` is settled (or `timeout` passes) and return its row: the receipt for
/// a caller that enqueued and wants the answer, whichever transport runs the workers.
/// Wakes on `NOTIFY idem_settled`, and polls as a fallback. `Ok(None)` if the action does
/// not exist; the row in whatever state it is when the time runs out.
pub async fn await_settled(
    pool: &sqlx::PgPool,
    id: ActionId,
    timeout: std::time::Duration,
) -> Result<Option<ActionRow>, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen("idem_settled").await?;
    loop {
        let row = get(pool, id).await?;
        match &row {
            None => return Ok(None),
            Some(r) if r.state.is_settled() => return Ok(row),
            Some(_) if tokio::time::Instant::now() >= deadline => return Ok(row),
            Some(_) => {}
        }
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(std::time::Duration::from_millis(500));
        let _ = tokio::time::timeout(wait, async {
            while let Ok(n) = listener.recv().await {
                if n.payload() == id.to_string() {
                    break;
                }
            }
        })
        .await;
    }
}

/// Push `due_at` forward for actions a worker is reconciling, so no other sweeper takes
/// them meanwhile. Not a state change.
pub async fn hold(
    conn: &mut sqlx::PgConnection,
    holds: &[(uuid::Uuid, std::time::Duration)],
) -> Result<(), StoreError> {
    if holds.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = holds.iter().map(|h| h.0).collect();
    let ms: Vec<i64> = holds.iter().map(|h| h.1.as_millis() as i64).collect();
    sqlx::query(
        "UPDATE idem.actions a SET due_at = now() + v.ms * interval '1 millisecond' \
         FROM unnest($1::uuid[], $2::int8[]) AS v(id, ms) \
         WHERE a.action_id = v.id AND a.state IN ('in_doubt', 'retry_scheduled')",
    )
    .bind(&ids)
    .bind(&ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Renew the leases `owner` holds on `ids` (its calls in flight) until `until`: the
/// heartbeat that keeps a short lease alive under a long call. Rows being settled right
/// now are skipped (their lease is about to end anyway). Returns how many were renewed.
pub async fn renew_leases(
    pool: &sqlx::PgPool,
    owner: &str,
    ids: &[uuid::Uuid],
    until: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE idem.actions a SET lease_until = $3 \
         FROM (SELECT action_id FROM idem.actions \
               WHERE action_id = ANY($1) AND state = 'executing' AND lease_owner = $2 \
               ORDER BY action_id FOR UPDATE SKIP LOCKED) x \
         WHERE a.action_id = x.action_id",
    )
    .bind(ids)
    .bind(owner)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::apply_sql;

    /// PostgreSQL refuses a statement whose parameters have a gap ($17 unused, $18 used):
    /// each variant numbers its own from $1 without one, as many as `apply_with` binds.
    #[test]
    fn each_apply_statement_numbers_its_parameters_without_gaps() {
        for (start, finish) in [(false, false), (true, false), (false, true), (true, true)] {
            let sql = apply_sql(start, finish);
            let want = 16 + 9 * usize::from(start) + 5 * usize::from(finish);
            let mut used = std::collections::BTreeSet::new();
            let mut rest = sql;
            while let Some(i) = rest.find('$') {
                rest = &rest[i + 1..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                assert!(!digits.is_empty(), "a $ not followed by a number in {sql}");
                used.insert(digits.parse::<usize>().unwrap());
            }
            assert_eq!(
                used.into_iter().collect::<Vec<_>>(),
                (1..=want).collect::<Vec<_>>(),
                "start {start}, finish {finish}"
            );
            assert_eq!(sql.contains("started AS"), start);
            assert_eq!(sql.contains("finished AS"), finish);
        }
    }
}
