//! The independent checker of the demo and the chaos soak: the partners' effect ledgers
//! against idem's receipts, action by action. It reads only the ledgers and the final rows,
//! never the workers' own counts.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use idem_store::Store;
use serde::Serialize;

/// One cell's figures.
#[derive(Debug, Default, Serialize)]
pub(crate) struct CellReport {
    pub actions: usize,
    pub effects: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub unsettled: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub needs_human: usize,
    pub dead: usize,
    pub in_doubt_resolved_by_reconcile: usize,
    pub in_doubt_resolved_by_replay: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

/// An action a person has to look at, and why idem stopped.
#[derive(Debug, Serialize)]
pub(crate) struct NeedsHuman {
    pub action_id: uuid::Uuid,
    pub cell: String,
    pub reason: String,
}

/// What the checker found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Verdict {
    /// Actions the agents meant (distinct ids).
    pub actions: usize,
    /// Effects in the partners' ledgers that belong to those actions.
    pub effects: usize,
    /// Effects beyond the first, per action.
    pub duplicates: usize,
    /// Actions whose final state contradicts the ledger (succeeded without the effect its
    /// receipt names, failed/rejected/dead with an effect), or that idem never recorded.
    pub lost: usize,
    /// Actions not in a final state when the check ran.
    pub unsettled: usize,
    pub needs_human: usize,
    pub cells: BTreeMap<String, CellReport>,
    /// Every needs_human action with idem's reason.
    pub needs_human_reasons: Vec<NeedsHuman>,
}

impl Verdict {
    /// Neither a duplicate nor a lost action.
    pub(crate) fn holds(&self) -> bool {
        self.duplicates == 0 && self.lost == 0
    }

    /// needs_human counts by (cell, reason), most frequent first.
    pub(crate) fn reasons_by_cell(&self) -> Vec<(String, String, usize)> {
        let mut m: BTreeMap<(String, String), usize> = BTreeMap::new();
        for n in &self.needs_human_reasons {
            *m.entry((n.cell.clone(), n.reason.clone())).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().map(|((c, r), n)| (c, r, n)).collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// (action id, cell, state, reason, receipt, settle latency in ms)
type ActionRow = (
    uuid::Uuid,
    String,
    String,
    Option<String>,
    Option<serde_json::Value>,
    Option<f64>,
);

/// Compare `ledger` (idem action id, partner object id) with idem's rows for `actions`
/// distinct action ids. `read_only` cells name no effect in their receipts.
pub(crate) async fn check(
    store: &Store,
    ledger: &[(Option<String>, String)],
    read_only: &[String],
    actions: usize,
) -> Result<Verdict> {
    let rows: Vec<ActionRow> = idem_store::audit::outcomes(store.pool())
        .await?
        .into_iter()
        .map(|o| {
            (
                o.action_id,
                o.cell,
                o.state,
                o.reason,
                o.receipt,
                o.settle_ms,
            )
        })
        .collect();
    let events = idem_store::audit::recoveries(store.pool()).await?;
    Ok(tally(&rows, &events, ledger, read_only, actions))
}

/// The comparison itself, on rows already read.
fn tally(
    rows: &[ActionRow],
    events: &[(uuid::Uuid, String)],
    ledger: &[(Option<String>, String)],
    read_only: &[String],
    actions: usize,
) -> Verdict {
    let mut effects_by_action: HashMap<String, Vec<String>> = HashMap::new();
    for (action, id) in ledger {
        effects_by_action
            .entry(action.clone().unwrap_or_default())
            .or_default()
            .push(id.clone());
    }
    let mut v = Verdict {
        actions,
        ..Verdict::default()
    };
    let mut cell_of: HashMap<uuid::Uuid, String> = HashMap::new();
    let mut latencies: HashMap<String, Vec<u64>> = HashMap::new();
    for (id, cell, state, reason, receipt, ms) in rows {
        cell_of.insert(*id, cell.clone());
        let c = v.cells.entry(cell.clone()).or_default();
        c.actions += 1;
        let effects = effects_by_action
            .get(&id.to_string())
            .cloned()
            .unwrap_or_default();
        c.effects += effects.len();
        c.duplicates += effects.len().saturating_sub(1);
        match state.as_str() {
            "succeeded" => {
                c.succeeded += 1;
                let partner_ref = receipt.as_ref().and_then(|r| r["partner_ref"].as_str());
                // Lost: succeeded without the effect its receipt names (read-only cells
                // have none to name).
                if !read_only.contains(cell)
                    && partner_ref.is_none_or(|r| !effects.iter().any(|e| e == r))
                {
                    c.lost += 1;
                }
            }
            "failed" | "rejected" | "dead" => {
                if state == "failed" {
                    c.failed += 1;
                } else if state == "dead" {
                    c.dead += 1;
                }
                // Lost: the partner did it but idem says it did not.
                if !effects.is_empty() {
                    c.lost += 1;
                }
            }
            "needs_human" => {
                c.needs_human += 1;
                v.needs_human_reasons.push(NeedsHuman {
                    action_id: *id,
                    cell: cell.clone(),
                    reason: reason
                        .clone()
                        .unwrap_or_else(|| "(no reason recorded)".into()),
                });
            }
            _ => c.unsettled += 1,
        }
        if let Some(ms) = ms {
            latencies.entry(cell.clone()).or_default().push(*ms as u64);
        }
    }
    for (id, event) in events {
        let Some(c) = cell_of.get(id).and_then(|cell| v.cells.get_mut(cell)) else {
            continue;
        };
        if event == "replay" {
            c.in_doubt_resolved_by_replay += 1;
        } else {
            c.in_doubt_resolved_by_reconcile += 1;
        }
    }
    for (cell, mut l) in latencies {
        l.sort_unstable();
        let pct = |p: f64| {
            l.get(((l.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        if let Some(c) = v.cells.get_mut(&cell) {
            c.p50_ms = pct(0.50);
            c.p99_ms = pct(0.99);
        }
    }
    let sum = |f: fn(&CellReport) -> usize| v.cells.values().map(f).sum::<usize>();
    v.effects = sum(|c| c.effects);
    v.duplicates = sum(|c| c.duplicates);
    v.lost = sum(|c| c.lost) + actions.saturating_sub(rows.len());
    v.unsettled = sum(|c| c.unsettled);
    v.needs_human = sum(|c| c.needs_human);
    v
}

/// The per-cell table both commands print.
pub(crate) fn print_cells(v: &Verdict) {
    println!(
        "{:<16} {:>7} {:>7} {:>10} {:>5} {:>9} {:>9} {:>6} {:>11} {:>16} {:>14} {:>7} {:>7}",
        "cell",
        "actions",
        "effects",
        "duplicates",
        "lost",
        "unsettled",
        "succeeded",
        "failed",
        "needs_human",
        "doubt→reconcile",
        "doubt→replay",
        "p50 ms",
        "p99 ms"
    );
    for (n, c) in &v.cells {
        println!(
            "{:<16} {:>7} {:>7} {:>10} {:>5} {:>9} {:>9} {:>6} {:>11} {:>16} {:>14} {:>7} {:>7}",
            n,
            c.actions,
            c.effects,
            c.duplicates,
            c.lost,
            c.unsettled,
            c.succeeded,
            c.failed,
            c.needs_human,
            c.in_doubt_resolved_by_reconcile,
            c.in_doubt_resolved_by_replay,
            c.p50_ms,
            c.p99_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str, partner_ref: Option<&str>) -> ActionRow {
        (
            uuid::Uuid::new_v4(),
            "stripe.charge".into(),
            state.into(),
            (state == "needs_human").then(|| "lookup found nothing".into()),
            partner_ref.map(|r| serde_json::json!({ "partner_ref": r })),
            Some(12.0),
        )
    }

    #[test]
    fn clean_run_holds() {
        let ok = row("succeeded", Some("pi_1"));
        let failed = row("failed", None);
        let ledger = vec![(Some(ok.0.to_string()), "pi_1".to_owned())];
        let v = tally(&[ok, failed], &[], &ledger, &[], 2);
        assert!(v.holds(), "{v:?}");
        assert_eq!((v.effects, v.unsettled), (1, 0));
    }

    #[test]
    fn a_second_effect_is_a_duplicate() {
        let ok = row("succeeded", Some("pi_1"));
        let ledger = vec![
            (Some(ok.0.to_string()), "pi_1".to_owned()),
            (Some(ok.0.to_string()), "pi_2".to_owned()),
        ];
        let v = tally(&[ok], &[], &ledger, &[], 1);
        assert_eq!(v.duplicates, 1);
        assert!(!v.holds());
    }

    #[test]
    fn contradictions_and_missing_actions_are_lost() {
        // Succeeded, but the partner has no such effect.
        let phantom = row("succeeded", Some("pi_9"));
        // Failed, but the partner did it.
        let failed = row("failed", None);
        let ledger = vec![(Some(failed.0.to_string()), "pi_3".to_owned())];
        let v = tally(&[phantom, failed], &[], &ledger, &[], 3);
        // Two contradictions and one action idem never recorded.
        assert_eq!(v.lost, 3);
        assert!(!v.holds());
    }

    #[test]
    fn open_states_are_unsettled_and_needs_human_keeps_its_reason() {
        let v = tally(
            &[row("in_doubt", None), row("needs_human", None)],
            &[],
            &[],
            &[],
            2,
        );
        assert_eq!((v.unsettled, v.needs_human), (1, 1));
        assert_eq!(v.needs_human_reasons[0].reason, "lookup found nothing");
        assert_eq!(v.reasons_by_cell()[0].2, 1);
    }
}
