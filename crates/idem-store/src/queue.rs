//! Taking work: outbox rows for the direct transport, due retries and doubts, and expired
//! leases. Every claim uses `FOR UPDATE SKIP LOCKED`, so any number of workers share the
//! queue without blocking each other or taking the same row.

use chrono::{DateTime, Utc};
use idem_core::{transition, ActionId, Envelope, Event, State};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::inbox::{ActionRow, RawRow, COLUMNS};
use crate::StoreError;

/// A row taken from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub seq: i64,
    pub action_id: Uuid,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
}

/// Delete and return up to `limit` outbox rows in enqueue order, skipping rows another
/// worker holds. The caller's transaction makes this atomic with what it does next.
pub async fn take_outbox(
    conn: &mut PgConnection,
    limit: u32,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let rows: Vec<(i64, Uuid, Vec<u8>, serde_json::Value)> = sqlx::query_as(
        r#"WITH picked AS (
               SELECT seq FROM idem.outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
           )
           DELETE FROM idem.outbox o USING picked WHERE o.seq = picked.seq
           RETURNING o.seq, o.action_id, o.payload, o.headers"#,
    )
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    let mut msgs: Vec<OutboxMessage> = rows
        .into_iter()
        .map(|(seq, action_id, payload, headers)| OutboxMessage {
            seq,
            action_id,
            payload,
            headers,
        })
        .collect();
    msgs.sort_by_key(|m| m.seq);
    Ok(msgs)
}

/// An outbox row taken with its inbox row locked (the direct transport's claim).
#[derive(Debug, Clone, PartialEq)]
pub struct TakenMessage {
    pub message: OutboxMessage,
    /// The inbox row named by the outbox row's `action_id` column, locked for the rest of
    /// the transaction; None if there is none. The caller still checks that the payload
    /// names this action with these arguments.
    pub row: Option<ActionRow>,
    /// The rule of the fleet's approval policy that holds this action, read in the same
    /// statement, when the row is still `received` and a rule holds it.
    pub held_by: Option<String>,
}

/// [`take_outbox`], and in the same statement lock the inbox rows the messages name and
/// read the approval policy for them: the direct transport's claim is one round trip
/// instead of four. Rows are locked in action-id order, as [`crate::inbox::lock`] does.
pub async fn take_outbox_locked(
    conn: &mut PgConnection,
    limit: u32,
) -> Result<Vec<TakenMessage>, StoreError> {
    use sqlx::{FromRow, Row};
    let sql = format!(
        r#"WITH picked AS (
               SELECT seq FROM idem.outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
           ), taken AS (
               -- `= ANY(ARRAY(…))`, not a join: the claim runs its generic plan, which
               -- cannot know LIMIT $1 and planned the join as a hash join over a
               -- sequential scan of the whole outbox; this is primary-key lookups.
               DELETE FROM idem.outbox o WHERE o.seq = ANY (ARRAY(SELECT seq FROM picked))
               RETURNING o.seq, o.action_id AS outbox_action_id, o.payload, o.headers
           ), locked AS MATERIALIZED (
               SELECT {COLUMNS} FROM idem.actions
               WHERE action_id IN (SELECT outbox_action_id FROM taken)
               ORDER BY action_id FOR UPDATE
           )
           SELECT t.seq, t.outbox_action_id, t.payload, t.headers, l.*,
                  CASE WHEN l.state = 'received' AND p.cell IS NOT NULL
                            AND idem.policy_holds(l.cell, l.args)
                       THEN idem.policy_rule(p) END AS held_by
           FROM taken t
           LEFT JOIN locked l ON l.action_id = t.outbox_action_id
           LEFT JOIN idem.policies p ON p.cell = l.cell
           ORDER BY t.seq"#
    );
    let rows = sqlx::query(&sql)
        // Prepared, re-prepared now and then: see the crate docs, "Plans".
        .bind(limit as i64)
        .fetch_all(conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let message = OutboxMessage {
            seq: r.try_get("seq")?,
            action_id: r.try_get("outbox_action_id")?,
            payload: r.try_get("payload")?,
            headers: r.try_get("headers")?,
        };
        let row = match r.try_get::<Option<Uuid>, _>("action_id")? {
            Some(_) => Some(ActionRow::try_from(RawRow::from_row(r)?)?),
            None => None,
        };
        out.push(TakenMessage {
            message,
            row,
            held_by: r.try_get("held_by")?,
        });
    }
    Ok(out)
}

/// Lock the inbox rows of `ids` that exist, in action-id order, each with the rule of the
/// fleet's approval policy that holds it (when it is still `received` and a rule holds
/// it): what [`receive`] and [`crate::policy::held`] find, in one statement, for
/// deliveries whose actions were enqueued in this database.
pub async fn lock_known(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<(ActionRow, Option<String>)>, StoreError> {
    use sqlx::{FromRow, Row};
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!(
        r#"WITH locked AS MATERIALIZED (
               SELECT {COLUMNS} FROM idem.actions WHERE action_id = ANY($1)
               ORDER BY action_id FOR UPDATE
           )
           SELECT l.*,
                  CASE WHEN l.state = 'received' AND p.cell IS NOT NULL
                            AND idem.policy_holds(l.cell, l.args)
                       THEN idem.policy_rule(p) END AS held_by
           FROM locked l LEFT JOIN idem.policies p ON p.cell = l.cell"#
    );
    let rows = sqlx::query(&sql)
        // Prepared, re-prepared now and then: see the crate docs, "Plans".
        .bind(ids)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                ActionRow::try_from(RawRow::from_row(r)?)?,
                r.try_get("held_by")?,
            ))
        })
        .collect()
}

/// A message that cannot become an action, kept with its raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub action_id: Option<ActionId>,
    pub raw: Vec<u8>,
    pub reason: String,
    /// Where it came from: outbox sequence, or Kafka topic/partition/offset.
    pub source: serde_json::Value,
}

pub async fn dead_letter(
    conn: &mut PgConnection,
    letters: &[DeadLetter],
) -> Result<(), StoreError> {
    if letters.is_empty() {
        return Ok(());
    }
    let ids: Vec<Option<Uuid>> = letters
        .iter()
        .map(|l| l.action_id.map(|a| a.as_uuid()))
        .collect();
    let raws: Vec<Vec<u8>> = letters.iter().map(|l| l.raw.clone()).collect();
    let reasons: Vec<String> = letters.iter().map(|l| l.reason.clone()).collect();
    let sources: Vec<serde_json::Value> = letters.iter().map(|l| l.source.clone()).collect();
    sqlx::query(
        "INSERT INTO idem.dead_letters (action_id, raw, reason, source) \
         SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::text[], $4::jsonb[])",
    )
    .bind(&ids)
    .bind(&raws)
    .bind(&reasons)
    .bind(&sources)
    .execute(conn)
    .await?;
    Ok(())
}

/// A delivered envelope matched against the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The inbox row, locked for the rest of the transaction.
    pub row: ActionRow,
    /// False when the inbox already holds this id with other arguments.
    pub same_arguments: bool,
}

/// Make sure every envelope has an inbox row (the direct transport's rows exist since
/// enqueue; a separate inbox database gets them here), then lock and return the rows: one
/// entry per envelope, in the envelopes' order. The fingerprint is computed by Postgres
/// exactly as `idem.enqueue` computes it.
pub async fn receive(
    conn: &mut PgConnection,
    envelopes: &[Envelope],
) -> Result<Vec<Received>, StoreError> {
    if envelopes.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<Uuid> = envelopes.iter().map(|e| e.action_id.as_uuid()).collect();
    let cells: Vec<String> = envelopes.iter().map(|e| e.cell.clone()).collect();
    let args: Vec<serde_json::Value> = envelopes.iter().map(|e| e.args.clone()).collect();
    let keys: Vec<String> = envelopes.iter().map(|e| e.ordering_key.clone()).collect();
    sqlx::query(
        r#"INSERT INTO idem.actions (action_id, cell, args, fingerprint, ordering_key)
           SELECT id, cell, args, sha256(convert_to(cell || E'\n' || args::text, 'UTF8')), okey
           FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[]) AS v(id, cell, args, okey)
           ORDER BY id
           ON CONFLICT (action_id) DO NOTHING"#,
    )
    .bind(&ids)
    .bind(&cells)
    .bind(&args)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    let rows = crate::inbox::lock(&mut *conn, &sorted).await?;
    let same: Vec<(Uuid, bool)> = sqlx::query_as(
        r#"SELECT v.id, a.fingerprint = sha256(convert_to(v.cell || E'\n' || v.args::text, 'UTF8'))
           FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) WITH ORDINALITY AS v(id, cell, args, ord)
           JOIN idem.actions a ON a.action_id = v.id ORDER BY v.ord"#,
    )
    .bind(&ids)
    .bind(&cells)
    .bind(&args)
    .fetch_all(&mut *conn)
    .await?;
    let by_id: std::collections::HashMap<Uuid, ActionRow> = rows
        .into_iter()
        .map(|r| (r.action_id.as_uuid(), r))
        .collect();
    Ok(same
        .into_iter()
        .filter_map(|(id, same_arguments)| {
            by_id.get(&id).map(|row| Received {
                row: row.clone(),
                same_arguments,
            })
        })
        .collect())
}

/// Lock up to `limit` actions still `received` that were enqueued before `older_than`,
/// oldest first, skipping rows another worker holds, and return them as the envelopes their
/// messages carried. Their delivery never came (or is very late): the caller drives them
/// from the inbox, and a message that does arrive later finds them no longer `received`.
pub async fn take_stranded(
    conn: &mut PgConnection,
    limit: u32,
    older_than: DateTime<Utc>,
) -> Result<Vec<Envelope>, StoreError> {
    let rows: Vec<(Uuid, String, serde_json::Value, String)> = sqlx::query_as(
        "SELECT action_id, cell, args, ordering_key FROM idem.actions \
         WHERE state = 'received' AND created_at < $2 \
         ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit as i64)
    .bind(older_than)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, cell, args, ordering_key)| Envelope {
            v: idem_core::envelope::ENVELOPE_VERSION,
            action_id: ActionId(id),
            cell,
            args,
            ordering_key,
        })
        .collect())
}

/// Lock up to `limit` actions whose retry or doubt is due, oldest first, skipping rows
/// another worker holds.
pub async fn take_due(conn: &mut PgConnection, limit: u32) -> Result<Vec<ActionRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM idem.actions \
         WHERE state IN ('retry_scheduled', 'in_doubt') AND due_at <= now() \
         ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    let rows: Vec<RawRow> = sqlx::query_as(&sql)
        .bind(limit as i64)
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(ActionRow::try_from).collect()
}

/// Move actions whose worker lost its lease (died or hung mid-call) to `in_doubt`, mark
/// their open attempt `lease_expired`, and audit it. Returns the ids moved.
pub async fn expire_leases(
    conn: &mut PgConnection,
    limit: u32,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ActionId>, StoreError> {
    let to = transition(State::Executing, Event::LeaseExpired).expect("edge exists");
    let moved: Vec<(Uuid,)> = sqlx::query_as(
        r#"WITH x AS (
               SELECT action_id FROM idem.actions
               WHERE state = $1 AND lease_until < $5
               ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED
           ), u AS (
               UPDATE idem.actions a SET state = $2, doubt_since = $5, due_at = $5,
                   lease_owner = NULL, lease_until = NULL, updated_at = now(),
                   reason = 'worker lost its lease mid-call'
               FROM x WHERE a.action_id = x.action_id
               RETURNING a.action_id, a.attempts
           ), t AS (
               UPDATE idem.attempts t SET result = 'lease_expired', finished_at = now()
               FROM u WHERE t.action_id = u.action_id AND t.number = u.attempts AND t.result IS NULL
           ), audit AS (
               INSERT INTO idem.transition_log (action_id, from_state, to_state, event, actor, reason)
               SELECT action_id, $1, $2, 'lease_expired', $4, 'worker lost its lease mid-call' FROM u
           )
           SELECT action_id FROM u"#,
    )
    .bind(State::Executing.as_str())
    .bind(to.as_str())
    .bind(limit as i64)
    .bind(actor)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(moved.into_iter().map(|(id,)| ActionId(id)).collect())
}

/// Lock up to `limit` actions awaiting approval that a person approved on their current
/// fingerprint, or whose approval window (`due_at`) has ended, skipping rows another
/// worker holds. Returns each row with its approval, if it has one: who approved and why,
/// as "approved by alice: looks right", for the transition that starts it.
pub async fn take_approvals(
    conn: &mut PgConnection,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Vec<(ActionRow, Option<String>)>, StoreError> {
    const APPROVAL: &str = "(SELECT 'approved by ' || regexp_replace(d.actor, '^human:', '') \
                 || coalesce(': ' || d.reason, '') \
          FROM idem.decisions d WHERE d.action_id = a.action_id \
          AND d.kind = 'approve' AND d.fingerprint = a.fingerprint ORDER BY d.id LIMIT 1)";
    let sql = format!(
        "SELECT * FROM (SELECT {COLUMNS}, {APPROVAL} AS approval FROM idem.actions a \
         WHERE state = 'awaiting_approval' AND (EXISTS (SELECT 1 FROM idem.decisions d \
         WHERE d.action_id = a.action_id AND d.kind = 'approve' \
         AND d.fingerprint = a.fingerprint) OR due_at <= $2) \
         ORDER BY updated_at LIMIT $1 FOR UPDATE SKIP LOCKED) t"
    );
    let rows: Vec<(RawRow, Option<String>)> = sqlx::query(&sql)
        .bind(limit as i64)
        .bind(now)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| {
            use sqlx::{FromRow, Row};
            Ok((
                RawRow::from_row(r)?,
                r.try_get::<Option<String>, _>("approval")?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    rows.into_iter()
        .map(|(r, approval)| Ok((ActionRow::try_from(r)?, approval)))
        .collect()
}
