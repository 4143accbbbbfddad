//! Deliveries from many callers at once (a Kafka consumer's partition lanes), combined into
//! shared transactions.
//!
//! A lane that keeps per-key order hands over one batch and waits until it is settled, so
//! with strict order (one message at a time) each lane alone would pay a write-ahead
//! transaction and a settle transaction per message. A [`Combiner`] lets every waiting lane
//! share them: the deliveries waiting when a write-ahead transaction starts go into it
//! together, and the outcomes waiting when a settle starts are settled together. Calls are
//! not combined: each caller sends its own started attempts and settles as soon as they
//! are done, so a slow partner call holds back only the caller whose delivery it is.
//!
//! A caller that has its next delivery in hand when its calls return hands over both: the
//! settle of the last and the write-ahead of the next go into one transaction (the settle
//! first), one commit per message instead of two ([`Combiner::settle_and_start`]).
//!
//! A caller that keeps order may also hand over more than it calls at once, a window:
//! [`Combiner::window`] says how much (what its calls get through within
//! `pace::HORIZON` at the running mean call time, so nothing extra for slow partners), and
//! [`Combiner::execute_in_order`] calls it in order, in rounds of at most `batch` calls,
//! never two of one ordering key in a round. With one call at a time per partition
//! (strict order) each message otherwise paid one commit of its own: `bench kafka-worker
//! --per-partition-batch 1` ran at 2,415 actions/s with 2 messages per combined
//! transaction, no process above a quarter of a core and the machine a quarter idle;
//! with windows, 11,004 (medians of 3).
//!
//! Order: a caller's next delivery starts only after this one's calls returned, so
//! combining never puts two of one caller's messages in flight at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use idem_core::{ActionId, Envelope};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::{Delivery, ReceiveReport, Worker, WorkerError};
use idem_core::ExecOutcome;

use crate::pace::CallPace;
use crate::steps::Started;

/// Write-ahead transactions under way at once: while one commits, the lanes that were
/// not in it go into the next. Each lane has one request in flight, so per-key order is
/// unaffected; two transactions lock disjoint inbox rows (a partition's actions are its
/// lane's). `bench kafka-worker --per-partition-batch 1`: 1,790 -> 2,443 actions/s
/// (medians of 4 interleaved) against one.
const WRITE_AHEADS: usize = 2;

/// Deliveries in one combined write-ahead transaction, at most.
const MAX_COMBINED: usize = 256;

/// Deliveries in a caller's window, at most, however fast the calls (or one batch, if
/// larger). `bench kafka-path` (three interleaved rounds): 8,941 actions/s before windows,
/// 9,377 with 64, 8,140 with up to 96 at batch 32.
const MAX_WINDOW: usize = 64;

type Reply<T> = oneshot::Sender<Result<T, Arc<WorkerError>>>;

struct StartRequest {
    /// Outcomes to settle first, in the same transaction.
    settle: Vec<(Started, ExecOutcome)>,
    deliveries: Vec<Delivery>,
    reply: Reply<(Vec<Started>, ReceiveReport)>,
}

struct SettleRequest {
    items: Vec<(Started, ExecOutcome)>,
    reply: Reply<()>,
}

/// A handle for delivering through shared transactions; clone it for each caller. Its
/// tasks end when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Combiner {
    worker: Worker,
    start: mpsc::Sender<StartRequest>,
    settle: mpsc::Sender<SettleRequest>,
    /// How long the calls made through [`Combiner::execute_in_order`] take.
    pace: Arc<CallPace>,
}

impl Combiner {
    /// Start the combining tasks for `worker` (on the current Tokio runtime).
    pub fn new(worker: Worker) -> Self {
        let (start, start_rx) = mpsc::channel(MAX_COMBINED);
        let (settle, settle_rx) = mpsc::channel(MAX_COMBINED);
        let start_rx = Arc::new(tokio::sync::Mutex::new(start_rx));
        for _ in 0..WRITE_AHEADS {
            tokio::spawn(starts(worker.clone(), start_rx.clone()));
        }
        tokio::spawn(settles(worker.clone(), settle_rx));
        Self {
            worker,
            start,
            settle,
            pace: Arc::default(),
        }
    }

    /// How much a caller that makes `batch` calls at once may write ahead in one
    /// transaction: one round of calls (see [`Combiner::execute_in_order`]), and as many
    /// more rounds and deliveries as the calls get through within `pace::HORIZON` (none
    /// before a call was timed, none with calls slower than that), at most [`MAX_WINDOW`]
    /// in all. The extra ones wait written ahead, their leases renewed, and a crash
    /// leaves them in doubt like a call under way.
    pub fn window(&self, batch: usize) -> Window {
        let batch = batch.max(1);
        let ahead = self.pace.within_horizon(batch);
        Window {
            deliveries: batch.saturating_add(ahead).min(MAX_WINDOW.max(batch)),
            rounds: 1 + self.pace.within_horizon(1).min(MAX_WINDOW - 1),
        }
    }

    /// Like [`Worker::deliver`]: receive `deliveries`, call the partner for what they
    /// start and settle it; returns once all of it is committed. The report is that of the
    /// combined write-ahead transaction this delivery was part of.
    pub async fn deliver(&self, deliveries: Vec<Delivery>) -> Result<ReceiveReport, WorkerError> {
        let (started, report) = self.settle_and_start(vec![], deliveries).await?;
        if started.is_empty() {
            return Ok(report);
        }
        let items = self.execute(started).await;
        self.settle(items).await?;
        Ok(report)
    }

    /// Settle `items` and write `deliveries` ahead in one shared transaction, the settle
    /// first; returns what the deliveries started, to [`Combiner::execute`]. Either both
    /// commit or neither does: on an error, hand both over again.
    pub async fn settle_and_start(
        &self,
        items: Vec<(Started, ExecOutcome)>,
        deliveries: Vec<Delivery>,
    ) -> Result<(Vec<Started>, ReceiveReport), WorkerError> {
        let (reply, answer) = oneshot::channel();
        self.start
            .send(StartRequest {
                settle: items,
                deliveries,
                reply,
            })
            .await
            .map_err(|_| WorkerError::CombinerStopped)?;
        answer
            .await
            .map_err(|_| WorkerError::CombinerStopped)?
            .map_err(WorkerError::Combined)
    }

    /// Send each started attempt to its partner, all at once; the outcomes, in no order.
    pub async fn execute(&self, started: Vec<Started>) -> Vec<(Started, ExecOutcome)> {
        self.worker.execute_all(started).await
    }

    /// Send `started` (in delivery order) to their partners in order: in groups of at most
    /// `batch`, a group only after the last one's calls returned, and never two of one
    /// ordering key in a group; so one key's calls are made one after another in delivery
    /// order, and with `batch` 1 every call waits for the one before. Every attempt's
    /// lease is renewed from now until its call ends. The outcomes, in no order.
    pub async fn execute_in_order(
        &self,
        started: Vec<Started>,
        batch: usize,
    ) -> Vec<(Started, ExecOutcome)> {
        let mut items = Vec::with_capacity(started.len());
        let mut waiting: VecDeque<_> = started
            .into_iter()
            .map(|s| {
                let call = self.worker.execute(&s);
                (s, call)
            })
            .collect();
        while !waiting.is_empty() {
            let mut keys = HashSet::new();
            let mut group = tokio::task::JoinSet::new();
            while group.len() < batch.max(1) {
                match waiting.front() {
                    Some((s, _)) if keys.insert(s.row.ordering_key.clone()) => {
                        let (s, call) = waiting.pop_front().expect("front was there");
                        let pace = self.pace.clone();
                        group.spawn(async move {
                            let t = Instant::now();
                            let outcome = call.await;
                            pace.observe(t.elapsed());
                            (s, outcome)
                        });
                    }
                    _ => break,
                }
            }
            while let Some(r) = group.join_next().await {
                if let Ok(item) = r {
                    items.push(item);
                }
            }
        }
        items
    }

    /// Settle `items` in a shared settle transaction (when there is nothing to start
    /// after them); returns once it is committed.
    pub async fn settle(&self, items: Vec<(Started, ExecOutcome)>) -> Result<(), WorkerError> {
        if items.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.settle
            .send(SettleRequest { items, reply })
            .await
            .map_err(|_| WorkerError::CombinerStopped)?;
        answer
            .await
            .map_err(|_| WorkerError::CombinerStopped)?
            .map_err(WorkerError::Combined)
    }
}

/// What a caller may write ahead in one transaction ([`Combiner::window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Deliveries, at most.
    pub deliveries: usize,
    /// Rounds of calls, at most: a round is at most `batch` calls, never two of one
    /// ordering key, and starts when the one before has returned.
    pub rounds: usize,
}

/// `first` and the requests waiting behind it now, up to [`MAX_COMBINED`] items.
fn gather<T>(rx: &mut mpsc::Receiver<T>, first: T, items: impl Fn(&T) -> usize) -> Vec<T> {
    let mut count = items(&first);
    let mut requests = vec![first];
    while count < MAX_COMBINED {
        match rx.try_recv() {
            Ok(r) => {
                count += items(&r);
                requests.push(r);
            }
            Err(_) => break,
        }
    }
    requests
}

/// Write-ahead transactions (each with the settles handed over with its deliveries): each
/// takes every request waiting when it begins.
async fn starts(worker: Worker, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<StartRequest>>>) {
    loop {
        let mut requests = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { break };
            gather(&mut rx, first, |r| r.deliveries.len() + r.settle.len())
        };
        // Whose delivery named each action (the first, when two named the same one).
        let mut owner: HashMap<ActionId, usize> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            for d in &r.deliveries {
                if let Ok(env) = Envelope::decode(&d.payload) {
                    owner.entry(env.action_id).or_insert(i);
                }
            }
        }
        let all: Vec<Delivery> = requests
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.deliveries))
            .collect();
        let settle: Vec<(Started, ExecOutcome)> = requests
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.settle))
            .collect();
        match worker.settle_and_start(&settle, &all).await {
            Ok((started, report)) => {
                let mut split: Vec<Vec<Started>> = requests.iter().map(|_| vec![]).collect();
                for s in started {
                    // Every started attempt comes from a delivery, so it has an owner.
                    let i = owner.get(&s.row.action_id).copied().unwrap_or(0);
                    split[i].push(s);
                }
                for (r, mine) in requests.into_iter().zip(split) {
                    let _ = r.reply.send(Ok((mine, report.clone())));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for r in requests {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Settle transactions: each takes every outcome waiting when it begins.
async fn settles(worker: Worker, mut rx: mpsc::Receiver<SettleRequest>) {
    while let Some(first) = rx.recv().await {
        let mut requests = gather(&mut rx, first, |r| r.items.len());
        let items: Vec<(Started, ExecOutcome)> = requests
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.items))
            .collect();
        let result = worker.settle(&items).await.map(|_| ()).map_err(Arc::new);
        for r in requests {
            let _ = r.reply.send(result.clone());
        }
    }
}
