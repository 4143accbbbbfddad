//! The worker: claims work, calls cells, settles outcomes; plus the sweeper.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use idem_cells::Registry;
use idem_core::plan::{plan_in_doubt, InDoubtPlan};
use idem_core::profile::ApprovalPolicy;
use idem_core::{ActionId, Envelope, Event, ExecOutcome, State};
use idem_store::queue::{self, DeadLetter};
use idem_store::{attempts, inbox, ActionRow, Change, NewAttempt, Store, StoreError};
use idem_telemetry::{metrics, TraceHeaders};
use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::heartbeat::InFlight;
use crate::pace::CallPace;
use crate::partner::{Op, PartnerAnswer, PartnerCall, PartnerService};
use crate::steps::{self, ReconcileJob, Started};
use crate::WorkerConfig;
use tower::ServiceExt;

/// A message from any transport: the raw bytes and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub payload: Vec<u8>,
    pub source: serde_json::Value,
    /// Trace context of the hop that delivered it (the relay's publish span); empty to
    /// continue from the enqueuing span stored on the action.
    pub trace: TraceHeaders,
    /// Why the delivery is not this worker's to take, seen before decoding (a Kafka
    /// message whose `idem-store` header names another store than the consumer group's):
    /// it goes dead with its bytes rather than become an action on the wrong store.
    pub misrouted: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A shared transaction of a [`crate::Combiner`] failed for every delivery in it.
    #[error(transparent)]
    Combined(std::sync::Arc<WorkerError>),
    #[error("the delivery combiner stopped")]
    CombinerStopped,
}

/// Actions a worker may hold taken but not yet settled, per call slot: a call's slot is
/// free as soon as the partner answered, so the next call does not wait for the settle
/// (group commit) of the last one, while settles that fall behind still stop new claims.
/// Four: with fast calls a claim takes up to two slots' worth (see [`crate::pace`]), and
/// the next claim must fit while the last one is being settled, or claims and settles
/// take turns instead of overlapping (`bench pg-worker`, 32 calls at once, medians of 5:
/// 7,710 actions/s before claims queued ahead, 10,198 with this, 9,582 with six).
const UNSETTLED_PER_CALL: usize = 4;

/// Direct claims under way at once. A claim is a round trip to take, one to write ahead
/// and a commit (3.6 ms for ~50 actions in `bench pg-worker`, the loop busy 90 % of the
/// time and PostgreSQL half idle): with a backlog the next one runs while one commits.
const CLAIMS_AT_ONCE: usize = 2;

/// How long a claim waits, with a backlog, for a claim's worth of room before it takes what
/// is free: about one settle of a full batch.
const CLAIM_PATIENCE: Duration = Duration::from_millis(3);

/// Begins every write-ahead transaction (a Kafka delivery's, the direct claim's) and every
/// settle, in the same round trip: their prepared statements run their generic plans.
/// Left to choose (`auto`), PostgreSQL kept planning them afresh for each call, because a
/// custom plan for the few rows a batch carries costs less than the generic one:
/// `pg_stat_statements` counted, on `bench kafka-worker --per-partition-batch 1`, 1.9–2.3 s
/// of planning against 1.2–1.3 s of execution, and on `bench pg-worker` the claim's
/// statement planned for 0.44 s and ran for 0.27 s (0.03–0.06 s of planning with this).
/// The generic plans follow the tables' size because connections re-prepare now and then
/// (`idem_store::REPREPARE_EVERY`), and the statements are written so that a generic plan
/// is index lookups (see `idem_store::queue::take_outbox_locked`). `LOCAL`: the setting
/// ends with the transaction, so a pooled connection is left as it was.
const GENERIC_PLANS: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// What one receive step did, for transports and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReceiveReport {
    pub started: usize,
    pub dead: usize,
    /// Deliveries of actions already past `received`: acknowledged without a partner call.
    pub duplicates: usize,
    pub awaiting_approval: usize,
}

/// One worker process's engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    store: Store,
    cells: Arc<Registry>,
    config: Arc<WorkerConfig>,
    /// Set once this process registered its cells and seeded the fleet's policy.
    registered: Arc<tokio::sync::OnceCell<()>>,
    /// Every partner call goes through this (tower layers around the cell).
    partner: PartnerService,
    /// Calls in flight, whose leases the heartbeat renews.
    in_flight: Arc<InFlight>,
}

/// Builds a [`Worker`]: `Worker::builder(store, cells).config(c).partner_layer(l).build()`.
#[derive(Debug)]
pub struct WorkerBuilder {
    store: Store,
    cells: Registry,
    config: WorkerConfig,
    partner: Option<PartnerService>,
}

impl WorkerBuilder {
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Replace the partner stack (tests compose their own from [`crate::partner`]'s
    /// layers, e.g. to count calls).
    pub fn partner_stack(mut self, stack: PartnerService) -> Self {
        self.partner = Some(stack);
        self
    }

    /// Wrap the partner stack in one more layer, outermost.
    pub fn partner_layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<PartnerService>,
        L::Service: tower::Service<PartnerCall, Response = PartnerAnswer, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<PartnerCall>>::Future: Send + 'static,
    {
        let inner = self
            .partner
            .take()
            .unwrap_or_else(crate::partner::default_stack);
        self.partner = Some(PartnerService::new(layer.layer(inner)));
        self
    }

    pub fn build(self) -> Worker {
        Worker {
            store: self.store,
            cells: Arc::new(self.cells),
            config: Arc::new(self.config),
            registered: Arc::default(),
            partner: self.partner.unwrap_or_else(crate::partner::default_stack),
            in_flight: Arc::default(),
        }
    }
}

enum Work {
    Execute(Started),
    Reconcile(ReconcileJob),
}

/// Inbox rows a claim already locked, with the policy rule that holds each (if any).
type Prematched = std::collections::HashMap<ActionId, (ActionRow, Option<String>)>;

/// What bounds the direct claims of one [`Worker::run`]: call slots, places among the
/// taken-but-unsettled, actions dispatched but still waiting for a slot, and call pace.
#[derive(Clone)]
struct Room {
    calls: Arc<Semaphore>,
    unsettled: Arc<Semaphore>,
    /// Dispatched actions waiting for a call slot (claimed ahead, see [`crate::pace`]).
    queued: Arc<AtomicUsize>,
    /// Actions asked for by claims under way, not dispatched yet.
    claiming: Arc<AtomicUsize>,
    pace: Arc<CallPace>,
}

impl Room {
    fn new(concurrency: usize) -> Self {
        Self {
            calls: Arc::new(Semaphore::new(concurrency)),
            unsettled: Arc::new(Semaphore::new(concurrency * UNSETTLED_PER_CALL)),
            queued: Arc::default(),
            claiming: Arc::default(),
            pace: Arc::default(),
        }
    }

    /// Call slots neither taken nor promised to a queued action or a claim under way,
    /// plus `ahead`.
    fn free_calls(&self, ahead: usize) -> u32 {
        let promised = self.queued.load(Ordering::Relaxed) + self.claiming.load(Ordering::Relaxed);
        (self.calls.available_permits() + ahead).saturating_sub(promised) as u32
    }

    /// Room for a sweep's actions: call slots neither taken nor promised to a queued action
    /// (a claim under way is not counted: its actions may queue behind the sweep's), and
    /// places among the unsettled not promised to a claim.
    fn sweep_room(&self) -> u32 {
        (self
            .calls
            .available_permits()
            .saturating_sub(self.queued.load(Ordering::Relaxed)) as u32)
            .min(self.free_slots())
    }

    /// Places among the unsettled not promised to a claim under way.
    fn free_slots(&self) -> u32 {
        self.unsettled
            .available_permits()
            .saturating_sub(self.claiming.load(Ordering::Relaxed)) as u32
    }

    /// Promise `n` places to a claim under way, until the ticket is dropped (after its
    /// actions are dispatched, or if the claim fails or panics).
    fn ticket(&self, n: u32) -> ClaimTicket {
        self.claiming.fetch_add(n as usize, Ordering::Relaxed);
        ClaimTicket {
            claiming: self.claiming.clone(),
            n: n as usize,
        }
    }

    /// Calls in flight or queued for a slot.
    fn busy(&self, concurrency: usize) -> usize {
        (concurrency + self.queued.load(Ordering::Relaxed))
            .saturating_sub(self.calls.available_permits())
    }

    /// A call slot now if one is free, else a wait in line (counted in `queued`).
    fn call_slot(
        &self,
    ) -> impl std::future::Future<Output = OwnedSemaphorePermit> + Send + 'static {
        let now = self.calls.clone().try_acquire_owned().ok();
        if now.is_none() {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        let (calls, queued) = (self.calls.clone(), self.queued.clone());
        async move {
            match now {
                Some(p) => p,
                None => {
                    let p = calls
                        .acquire_owned()
                        .await
                        .expect("semaphore is never closed");
                    queued.fetch_sub(1, Ordering::Relaxed);
                    p
                }
            }
        }
    }
}

/// Room promised to a direct claim under way ([`Room::ticket`]).
struct ClaimTicket {
    claiming: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for ClaimTicket {
    fn drop(&mut self) {
        self.claiming.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// A direct claim's answer, with the room it was promised.
type Claimed = (ClaimTicket, Result<Vec<Work>, WorkerError>);

struct Settlement {
    started: Started,
    outcome: ExecOutcome,
    /// The action's place among those taken but not settled, back once the settler has
    /// committed the outcome: claims run at most [`UNSETTLED_PER_CALL`] × concurrency
    /// ahead of settles. (The call's own slot is free already.)
    _slot: OwnedSemaphorePermit,
    /// The lease stays renewed until the settler has committed the outcome.
    _in_flight: crate::heartbeat::Registration,
}

fn sample() -> f64 {
    rand::thread_rng().gen::<f64>()
}

impl Worker {
    /// A worker with the default partner stack ([`crate::partner::default_stack`]).
    pub fn new(store: Store, cells: Registry, config: WorkerConfig) -> Self {
        Self::builder(store, cells).config(config).build()
    }

    /// Build a worker: its configuration and partner stack.
    pub fn builder(store: Store, cells: Registry) -> WorkerBuilder {
        WorkerBuilder {
            store,
            cells,
            config: WorkerConfig::default(),
            partner: None,
        }
    }

    /// The same worker with outbox claims off: for the Kafka transport, where the relay
    /// drains the outbox and this worker only sweeps.
    pub fn without_outbox_claims(mut self) -> Self {
        let mut c = (*self.config).clone();
        c.claim_outbox = false;
        self.config = Arc::new(c);
        self
    }

    /// Send a written-ahead attempt through the partner stack (tracing, rate limit,
    /// metrics, timeout; see [`crate::partner`]). The future owns what it needs.
    pub(crate) fn execute(
        &self,
        s: &Started,
    ) -> impl std::future::Future<Output = ExecOutcome> + Send + 'static {
        let call = PartnerCall {
            cell: s.cell.clone(),
            action: s.row.action_id,
            args: s.row.args.clone(),
            trace: s.row.trace.clone(),
            op: Op::Execute(s.attempt.clone()),
        };
        let svc = self.partner.clone();
        let registration = self.in_flight.enter(s.row.action_id);
        self.in_flight
            .keep_alive(&self.store, &self.config.id, self.config.lease);
        async move {
            let Ok(answer) = svc.oneshot(call).await;
            drop(registration);
            answer.outcome()
        }
    }

    /// Who takes attempts here, with the lease they first get.
    fn lessee(&self) -> steps::Lessee<'_> {
        steps::Lessee {
            worker: &self.config.id,
            lease: self.config.lease,
        }
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn cells(&self) -> &Registry {
        &self.cells
    }

    /// Run until `shutdown` turns true, then stop claiming, finish in-flight calls and
    /// settle them. Dropping (aborting) this future abandons in-flight calls instead: their
    /// leases expire and the sweeper of any worker drives them on.
    /// Register this worker's cells (enqueue refuses others) and write each cell's own
    /// approval rule (its profile: a cell default or a worker's `--approval` flag) into the
    /// fleet's policy where that cell has no rule yet. The database's rule always wins: a
    /// worker never loosens or overrides it. Runs once per process, before the first
    /// action is received.
    pub async fn register_with_fleet(&self) -> Result<(), WorkerError> {
        self.registered
            .get_or_try_init(|| self.register_now())
            .await
            .map(|_| ())
    }

    async fn register_now(&self) -> Result<(), WorkerError> {
        // Enqueue accepts only cells some worker runs: say which ones this one does.
        // (and what the database can check for them at enqueue).
        let facts: Vec<idem_store::cells::CellFacts> = self
            .cells
            .iter()
            .map(|c| idem_store::cells::CellFacts {
                name: c.name().to_string(),
                input_schema: c.input_schema(),
                lookup: idem_store::cells::lookup_kind(&c.profile().lookup),
            })
            .collect();
        idem_store::cells::register_cells(self.store.pool(), &facts, &self.config.id)
            .await
            .map_err(StoreError::from)?;
        for cell in self.cells.iter() {
            let rule = &cell.profile().approval;
            if *rule == ApprovalPolicy::Never {
                continue;
            }
            let by = format!("worker {} (cell profile or --approval)", self.config.id);
            if idem_store::policy::seed(self.store.pool(), cell.name().as_str(), rule, &by)
                .await
                .map_err(StoreError::from)?
            {
                tracing::info!(cell = %cell.name(), ?rule, "seeded the approval policy");
            }
        }
        Ok(())
    }

    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let room = Room::new(self.config.concurrency);
        let (settle_tx, settle_rx) = mpsc::channel::<Settlement>(self.config.concurrency * 2);
        let mut tasks = JoinSet::new();
        {
            let me = self.clone();
            let room = room.clone();
            tasks.spawn(async move { me.settler(settle_rx, room).await });
        }
        let mut listener = match PgListener::connect_with(self.store.pool()).await {
            Ok(mut l) => match l.listen("idem_outbox").await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no LISTEN connection; polling only");
                None
            }
        };
        self.register_with_fleet().await?;
        let mut last_sweep = Instant::now() - self.config.sweep_interval;
        let mut rechecks = idem_store::outbox::Rechecks::default();
        // The last claim took all it asked for: more is likely waiting in the outbox.
        let mut backlog = false;
        // Cleared when a wait for a claim's worth of room ran out (claim what is free).
        let mut patient = true;
        // Claims under way: with a backlog a second one runs while the first commits.
        let mut claims: JoinSet<Claimed> = JoinSet::new();
        // Claim now: at start, after a wake (notification, poll, room), after a full claim.
        // After one that came back short, wait for a wake as before.
        let mut claim_due = true;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut busy = false;
            while let Some(done) = claims.try_join_next() {
                if let Some(more) = self.claimed(done, &room, &settle_tx, &mut tasks).await {
                    backlog = more;
                    busy |= more;
                    claim_due |= more;
                    patient = true;
                } else {
                    claim_due = true;
                }
            }
            // With fast calls claims may queue up to three slots' worth behind the slots.
            let ahead = room.pace.ahead(self.config.concurrency);
            let claim = self
                .config
                .batch
                .min((self.config.concurrency + ahead) as u32)
                .max(1);
            let (free_calls, free_slots) = (room.free_calls(ahead), room.free_slots());
            let free = free_calls.min(free_slots);
            // With a backlog, wait (up to CLAIM_PATIENCE) for a claim's worth of room rather
            // than claim the few permits one settle returned: a claim's round trips and
            // commit cost about the same for 16 actions as for 32 (`bench pg-worker`: the
            // claim loop was busy 97 % of the time, claiming 16 at 2.2 ms a claim). A whole
            // claim when settles hold the room (they return it a batch at a time), half of
            // one when calls do (they end one by one). Nothing free at all is saturated
            // too: wake when permits come back rather than after a poll interval.
            let calls_scarce = free_calls < free_slots;
            let whole = if calls_scarce {
                (claim / 2).max(1)
            } else {
                claim
            };
            let enough = if (backlog && patient) || free == 0 {
                whole
            } else {
                1
            };
            // A second claim only with a backlog, and only for a whole claim's worth.
            let (saturated, claim_now) = if claims.is_empty() {
                (free < enough, true)
            } else {
                (free < claim, backlog && claims.len() < CLAIMS_AT_ONCE)
            };
            if self.config.claim_outbox && !saturated && claim_now && claim_due {
                let n = free.min(self.config.batch);
                let ticket = room.ticket(n);
                let me = self.clone();
                claims.spawn(async move { (ticket, me.claim_outbox(n).await) });
                // With a backlog a second claim may start at once.
                claim_due = backlog;
                busy = backlog;
            }
            // After the claim, so that a wake's claim never waits for a sweep; a sweep that
            // finds no room runs on a later turn.
            let sweep_room = room.sweep_room();
            if last_sweep.elapsed() >= self.config.sweep_interval && sweep_room > 0 {
                last_sweep = Instant::now();
                match self.sweep(sweep_room.min(self.config.batch)).await {
                    Ok((work, full)) => {
                        if full {
                            // More is due than one sweep takes (after a worker died, say):
                            // sweep again as soon as there are permits.
                            last_sweep = Instant::now() - self.config.sweep_interval;
                            busy = true;
                        }
                        self.dispatch(work, &room, &settle_tx, &mut tasks).await
                    }
                    Err(e) => tracing::warn!(error = %e, "sweep failed; retrying"),
                }
                let free = room.free_calls(0).min(room.free_slots());
                if free > 0 {
                    match self.claim_stranded(free.min(self.config.batch)).await {
                        Ok(work) => self.dispatch(work, &room, &settle_tx, &mut tasks).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "stranded-action claim failed; retrying")
                        }
                    }
                }
            }
            // Reap finished tasks so the set does not grow.
            while let Some(r) = tasks.try_join_next() {
                if let Err(e) = r {
                    if e.is_panic() {
                        tracing::error!(error = %e, "worker task panicked");
                    }
                }
            }
            if busy {
                continue;
            }
            let wait = self.config.poll_interval.min(self.config.sweep_interval);
            let poll = tokio::time::Instant::now() + wait;
            let wake = rechecks.wake(poll);
            let claiming = !claims.is_empty();
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = async {
                    match listener.as_mut() {
                        Some(l) => { let _ = l.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    rechecks.notified();
                    claim_due = true;
                }
                Some(done) = claims.join_next(), if claiming => {
                    if let Some(more) = self.claimed(done, &room, &settle_tx, &mut tasks).await {
                        backlog = more;
                        claim_due |= more;
                        patient = true;
                    } else {
                        claim_due = true;
                    }
                }
                room = async {
                    // With a claim under way, its answer is what to wait for.
                    if saturated && !claiming {
                        // Queued actions wait for call slots ahead of this (the semaphore
                        // is first come, first served), so `enough` less what may queue.
                        let (scarcer, want) = if calls_scarce {
                            (&room.calls, enough.saturating_sub(ahead as u32).max(1))
                        } else {
                            (&room.unsettled, enough)
                        };
                        let room = scarcer.acquire_many(want);
                        if free == 0 {
                            let _ = room.await;
                            true
                        } else {
                            tokio::time::timeout(CLAIM_PATIENCE, room).await.is_ok()
                        }
                    } else {
                        std::future::pending::<bool>().await
                    }
                } => {
                    patient = room;
                    claim_due = true;
                }
                _ = tokio::time::sleep_until(wake) => {
                    rechecks.fired();
                    claim_due = true;
                }
            }
        }
        // Claims under way have written their actions ahead: call and settle them too.
        while let Some(done) = claims.join_next().await {
            self.claimed(done, &room, &settle_tx, &mut tasks).await;
        }
        // Graceful stop: every place among the unsettled back means every action taken
        // was called (queued ones too) and settled, or its settle given up on.
        let _all = room
            .unsettled
            .acquire_many((self.config.concurrency * UNSETTLED_PER_CALL) as u32)
            .await
            .expect("semaphore is never closed");
        drop(settle_tx);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Dispatch what a claim took; whether it took all it asked for (more is likely
    /// waiting), or None if it failed.
    async fn claimed(
        &self,
        done: Result<Claimed, tokio::task::JoinError>,
        room: &Room,
        settle_tx: &mpsc::Sender<Settlement>,
        tasks: &mut JoinSet<()>,
    ) -> Option<bool> {
        match done {
            Ok((ticket, Ok(work))) => {
                let full = !work.is_empty() && work.len() == ticket.n;
                self.dispatch(work, room, settle_tx, tasks).await;
                drop(ticket);
                Some(full)
            }
            Ok((_, Err(e))) => {
                tracing::warn!(error = %e, "claim from outbox failed; retrying");
                tokio::time::sleep(self.config.poll_interval).await;
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "claim task panicked");
                None
            }
        }
    }

    /// Start a task per taken action. Each holds its place among the unsettled from now
    /// on and its lease is renewed from now on (queued ones too); it calls once it has a
    /// call slot.
    async fn dispatch(
        &self,
        work: Vec<Work>,
        room: &Room,
        settle_tx: &mpsc::Sender<Settlement>,
        tasks: &mut JoinSet<()>,
    ) {
        for w in work {
            let slot = room
                .unsettled
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let call_slot = room.call_slot();
            match w {
                Work::Execute(started) => {
                    let tx = settle_tx.clone();
                    let call = self.execute(&started);
                    let in_flight = self.in_flight.enter(started.row.action_id);
                    let pace = room.pace.clone();
                    tasks.spawn(async move {
                        let permit = call_slot.await;
                        let t = Instant::now();
                        let outcome = call.await;
                        pace.observe(t.elapsed());
                        // The call is over: its slot goes to the next call; the action's
                        // place among the unsettled comes back after the settle commits.
                        drop(permit);
                        let _ = tx
                            .send(Settlement {
                                started,
                                outcome,
                                _slot: slot,
                                _in_flight: in_flight,
                            })
                            .await;
                    });
                }
                Work::Reconcile(job) => {
                    let me = self.clone();
                    tasks.spawn(async move {
                        let permit = call_slot.await;
                        me.reconcile(job).await;
                        drop((permit, slot));
                    });
                }
            }
        }
    }

    /// Commit finished calls in batches: whatever has arrived, and while other calls are
    /// still in flight, what arrives within `settle_linger` more (group commit: one
    /// statement for many outcomes). `room` says how many calls are in flight or queued.
    async fn settler(&self, mut rx: mpsc::Receiver<Settlement>, room: Room) {
        let cap = self.config.batch.max(1) as usize;
        let linger = self.config.settle_linger;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < cap {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => {
                        let in_flight = room.busy(self.config.concurrency);
                        if linger.is_zero() || in_flight == 0 {
                            break;
                        }
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(s)) => batch.push(s),
                            _ => break,
                        }
                    }
                }
            }
            let items: Vec<(Started, ExecOutcome)> = batch
                .iter()
                .map(|s| (s.started.clone(), s.outcome.clone()))
                .collect();
            let mut delay = Duration::from_millis(50);
            for round in 0..8 {
                match self.settle(&items).await {
                    Ok(_) => break,
                    Err(e) => {
                        // The actions keep their leases; if this never succeeds the sweeper
                        // moves them to in_doubt and a replay or reconcile settles them.
                        tracing::warn!(error = %e, round, "settle failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
            drop(batch); // releases the permits
        }
    }

    /// Settle executed attempts in one transaction. Returns how many compare-and-sets held.
    pub async fn settle(&self, items: &[(Started, ExecOutcome)]) -> Result<usize, WorkerError> {
        // One statement, in a transaction only for its generic plans: results,
        // compare-and-sets, audit, receipts.
        let mut tx = self.store.pool().begin_with(GENERIC_PLANS).await?;
        let applied = self.settle_in(&mut tx, items).await?;
        tx.commit().await?;
        Ok(settled(&applied, items.len()))
    }

    /// The settle's statement for `items`, inside `tx`; nothing is counted until the
    /// caller commits and hands the result to [`settled`].
    async fn settle_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        items: &[(Started, ExecOutcome)],
    ) -> Result<inbox::Applied, WorkerError> {
        let now = Utc::now();
        let mut audits = Vec::with_capacity(items.len());
        let mut changes = Vec::with_capacity(items.len());
        for (started, outcome) in items {
            if started.rule == idem_core::SendRule::SameKeyReplay
                && matches!(outcome, ExecOutcome::Succeeded(_))
            {
                // The partner answered a same-key resend: its idempotency layer stopped a
                // second effect.
                metrics::duplicate_suppressed(metrics::Layer::PartnerReplay, 1);
            }
            let (audit, change, _) = steps::settle(started, outcome, now, sample());
            audits.push(audit);
            changes.push(change);
        }
        let writes = inbox::AttemptWrites {
            finish: &audits,
            ..Default::default()
        };
        Ok(inbox::apply_with(tx, &changes, writes, &self.config.id).await?)
    }

    /// Take new actions from the outbox (direct transport) and start them: one statement
    /// takes the messages, locks their inbox rows and reads the policy for them, one more
    /// starts them and writes their attempts ahead, then the commit.
    async fn claim_outbox(&self, limit: u32) -> Result<Vec<Work>, WorkerError> {
        // Before the policy is read below: registering may seed it.
        self.register_with_fleet().await?;
        let mut tx = self.store.pool().begin_with(GENERIC_PLANS).await?;
        let taken = queue::take_outbox_locked(&mut tx, limit).await?;
        if taken.is_empty() {
            tx.rollback().await?;
            return Ok(vec![]);
        }
        let mut known = Prematched::default();
        let mut deliveries = Vec::with_capacity(taken.len());
        for t in taken {
            if let Some(row) = t.row {
                known.insert(row.action_id, (row, t.held_by));
            }
            deliveries.push(Delivery {
                payload: t.message.payload,
                source: serde_json::json!({ "transport": "postgres", "outbox_seq": t.message.seq }),
                trace: TraceHeaders::from_json(&t.message.headers),
                misrouted: None,
            });
        }
        let (started, _) = self.start_in(tx, &deliveries, None, &known).await?;
        Ok(started.into_iter().map(Work::Execute).collect())
    }

    /// Receive `deliveries` in `tx`, commit, count, and return what to execute. Callers
    /// register the worker with the fleet first (it may seed the policy read here).
    async fn start_in(
        &self,
        mut tx: Transaction<'static, Postgres>,
        deliveries: &[Delivery],
        reason: Option<&str>,
        known: &Prematched,
    ) -> Result<(Vec<Started>, ReceiveReport), WorkerError> {
        let (started, report, applied) =
            self.receive_in(&mut tx, deliveries, reason, known).await?;
        tx.commit().await?;
        counted(&applied, &report);
        Ok((started, report))
    }

    /// Start actions still `received` past `stranded_after` from their inbox rows: their
    /// delivery never came (a Kafka message dropped by retention before anyone read it) or
    /// is very late. The start is the same compare-and-set a delivery makes, so a message
    /// that arrives afterwards is a duplicate; only the order among one ordering key's
    /// actions is given up for these.
    async fn claim_stranded(&self, limit: u32) -> Result<Vec<Work>, WorkerError> {
        let Some(after) = self.config.stranded_after else {
            return Ok(vec![]);
        };
        let older_than = Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
        // Before the policy is read: registering may seed it.
        self.register_with_fleet().await?;
        let mut tx = self.store.pool().begin().await?;
        let envelopes = queue::take_stranded(&mut tx, limit, older_than).await?;
        if envelopes.is_empty() {
            tx.rollback().await?;
            return Ok(vec![]);
        }
        let deliveries: Vec<Delivery> = envelopes
            .iter()
            .map(|e| Delivery {
                payload: e.encode(),
                source: serde_json::json!({ "transport": "inbox", "stranded_after_ms": after.as_millis() as u64 }),
                trace: TraceHeaders::default(),
                misrouted: None,
            })
            .collect();
        let reason = format!(
            "re-driven from the inbox: no delivery within {}s of enqueue",
            after.as_secs()
        );
        let (started, _) = self
            .start_in(tx, &deliveries, Some(&reason), &Prematched::default())
            .await?;
        tracing::warn!(
            count = deliveries.len(),
            started = started.len(),
            "actions stranded in received (no delivery came); driving them from the inbox"
        );
        Ok(started.into_iter().map(Work::Execute).collect())
    }

    /// Receive deliveries from any transport and run what they start to completion:
    /// call, classify, settle. For transports that hand over one batch at a time.
    pub async fn deliver(&self, deliveries: &[Delivery]) -> Result<ReceiveReport, WorkerError> {
        let (started, report) = self.deliver_start(deliveries).await?;
        let items = self.execute_all(started).await;
        self.settle(&items).await?;
        Ok(report)
    }

    /// The first half of [`Worker::deliver`]: match the deliveries to the inbox and write
    /// their attempts ahead, in one committed transaction. What it returns may be sent.
    pub(crate) async fn deliver_start(
        &self,
        deliveries: &[Delivery],
    ) -> Result<(Vec<Started>, ReceiveReport), WorkerError> {
        self.settle_and_start(&[], deliveries).await
    }

    /// Settle `items` and start `deliveries` in one transaction, the settle first: a
    /// partition lane settles its last message and writes its next one ahead with one
    /// commit instead of two. Per-key order holds: the next message's call comes after the
    /// commit, which is after the last one's call returned.
    pub(crate) async fn settle_and_start(
        &self,
        items: &[(Started, ExecOutcome)],
        deliveries: &[Delivery],
    ) -> Result<(Vec<Started>, ReceiveReport), WorkerError> {
        // Before the policy is read below: registering may seed it.
        self.register_with_fleet().await?;
        let mut tx = self.store.pool().begin_with(GENERIC_PLANS).await?;
        let settles = if items.is_empty() {
            None
        } else {
            Some(self.settle_in(&mut tx, items).await?)
        };
        // Lock the inbox rows the deliveries name and read their policy in one statement;
        // receive_in checks each delivery against its row and takes the full path for the
        // rest (a separate inbox database, an id reused with other arguments).
        let mut ids: Vec<uuid::Uuid> = deliveries
            .iter()
            .filter_map(|d| Envelope::decode(&d.payload).ok())
            .map(|e| e.action_id.as_uuid())
            .collect();
        ids.sort();
        ids.dedup();
        let known: Prematched = if ids.is_empty() {
            Prematched::default()
        } else {
            queue::lock_known(&mut tx, &ids)
                .await?
                .into_iter()
                .map(|(row, held)| (row.action_id, (row, held)))
                .collect()
        };
        let started = if deliveries.is_empty() {
            tx.commit().await?;
            (vec![], ReceiveReport::default())
        } else {
            self.start_in(tx, deliveries, None, &known).await?
        };
        if let Some(applied) = settles {
            settled(&applied, items.len());
        }
        Ok(started)
    }

    /// Send each started attempt to its partner, all at once; the outcomes, in no order.
    pub(crate) async fn execute_all(&self, started: Vec<Started>) -> Vec<(Started, ExecOutcome)> {
        let mut set = JoinSet::new();
        for s in started {
            let call = self.execute(&s);
            set.spawn(async move { (s, call.await) });
        }
        let mut items = vec![];
        while let Some(r) = set.join_next().await {
            if let Ok(item) = r {
                items.push(item);
            }
        }
        items
    }

    /// Decode, match against the inbox, gate and write attempts ahead, inside `tx`.
    /// `reason` goes on the audit row of every start (why it did not come from a delivery).
    /// `known` holds inbox rows the caller already locked, with the policy rule that holds
    /// each: a delivery that names one with the same cell and arguments is matched to it
    /// without another statement; every other delivery goes through [`queue::receive`].
    async fn receive_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        deliveries: &[Delivery],
        reason: Option<&str>,
        known: &Prematched,
    ) -> Result<(Vec<Started>, ReceiveReport, inbox::Applied), WorkerError> {
        let mut report = ReceiveReport::default();
        let mut letters = vec![];
        let mut envelopes = vec![];
        for d in deliveries {
            if let Some(why) = &d.misrouted {
                letters.push(DeadLetter {
                    action_id: None,
                    raw: d.payload.clone(),
                    reason: why.clone(),
                    source: d.source.clone(),
                });
                continue;
            }
            match Envelope::decode(&d.payload) {
                Ok(env) => envelopes.push((env, d)),
                Err(e) => letters.push(DeadLetter {
                    action_id: serde_json::from_slice::<serde_json::Value>(&d.payload)
                        .ok()
                        .and_then(|v| v["action_id"].as_str().and_then(|s| s.parse().ok())),
                    raw: d.payload.clone(),
                    reason: e.to_string(),
                    source: d.source.clone(),
                }),
            }
        }
        // Match each envelope to its inbox row: the locked row the caller passed when it is
        // the same request, else insert-or-lock it here and compare fingerprints.
        let mut matched: Vec<Option<queue::Received>> = vec![None; envelopes.len()];
        let mut held: std::collections::HashMap<ActionId, String> = Default::default();
        let mut rest = vec![];
        for (i, (env, _)) in envelopes.iter().enumerate() {
            match known.get(&env.action_id) {
                Some((row, rule))
                    if row.cell == env.cell
                        && row.args == env.args
                        && row.ordering_key == env.ordering_key =>
                {
                    if let Some(rule) = rule {
                        held.insert(row.action_id, rule.clone());
                    }
                    matched[i] = Some(queue::Received {
                        row: row.clone(),
                        same_arguments: true,
                    });
                }
                _ => rest.push(i),
            }
        }
        if !rest.is_empty() {
            let slow: Vec<Envelope> = rest.iter().map(|&i| envelopes[i].0.clone()).collect();
            let received = queue::receive(tx, &slow).await?;
            let fresh: Vec<ActionId> = received
                .iter()
                .filter(|r| r.row.state == State::Received)
                .map(|r| r.row.action_id)
                .collect();
            held.extend(idem_store::policy::held(tx, &fresh).await?);
            // `receive` answers one entry per envelope, in order (each with its own
            // fingerprint check, so an id twice with different arguments stays apart).
            if received.len() == rest.len() {
                for (i, r) in rest.into_iter().zip(received) {
                    matched[i] = Some(r);
                }
            } else {
                for r in received {
                    if let Some(&i) = rest.iter().find(|&&i| {
                        matched[i].is_none() && envelopes[i].0.action_id == r.row.action_id
                    }) {
                        matched[i] = Some(r);
                    }
                }
            }
        }
        let now = Utc::now();
        let mut changes: Vec<Change> = vec![];
        let mut new_attempts: Vec<NewAttempt> = vec![];
        let mut started = vec![];
        let mut seen = std::collections::HashSet::new();
        for (r, (env, d)) in matched.iter().zip(&envelopes) {
            let Some(r) = r else {
                tracing::error!(action = %env.action_id, "no inbox row after receive; left to the stranded sweep");
                continue;
            };
            if !r.same_arguments {
                letters.push(DeadLetter {
                    action_id: Some(env.action_id),
                    raw: d.payload.clone(),
                    reason:
                        "action id reused with other arguments (conflict); the first action stands"
                            .into(),
                    source: d.source.clone(),
                });
                continue;
            }
            if r.row.state != State::Received || !seen.insert(r.row.action_id) {
                report.duplicates += 1;
                continue;
            }
            let row = &r.row;
            let Some(cell) = self.cells.get(&row.cell) else {
                changes.push(
                    Change::new(row, Event::Poison, now)
                        .expect("received accepts poison")
                        .reason(Some(format!("unknown cell {:?}", row.cell))),
                );
                report.dead += 1;
                continue;
            };
            if let Err(e) = cell.validate(&row.args) {
                changes.push(
                    Change::new(row, Event::Poison, now)
                        .expect("received accepts poison")
                        .reason(Some(e.to_string())),
                );
                report.dead += 1;
                continue;
            }
            if let Some(rule) = held.get(&row.action_id) {
                let expires = now
                    + chrono::Duration::from_std(self.config.approval_ttl)
                        .unwrap_or(chrono::Duration::MAX);
                changes.push(
                    Change::new(row, Event::RequireApproval, now)
                        .expect("received accepts approval")
                        .reason(Some(format!(
                            "the approval policy for {} ({rule}) holds it for a person",
                            row.cell
                        )))
                        .due(Some(expires)),
                );
                report.awaiting_approval += 1;
                continue;
            }
            match steps::start_attempt(row, cell, &[], Event::Start, self.lessee(), now) {
                Ok((change, attempt, mut s)) => {
                    if !d.trace.is_empty() {
                        s.row.trace = d.trace.clone();
                    }
                    let change = match reason {
                        Some(r) => change.reason(Some(r.to_owned())),
                        None => change,
                    };
                    changes.push(change);
                    new_attempts.push(attempt);
                    started.push(s);
                }
                Err(e) => tracing::error!(action = %row.action_id, error = %e, "cannot start"),
            }
        }
        report.dead += letters.len();
        queue::dead_letter(tx, &letters).await?;
        let writes = inbox::AttemptWrites {
            start: &new_attempts,
            ..Default::default()
        };
        let applied = inbox::apply_with(tx, &changes, writes, &self.config.id).await?;
        started.retain(|s| applied.contains(&s.row.action_id));
        report.started = started.len();
        Ok((started, report, applied))
    }

    /// One sweep run to completion (for `idem sweep` and tests): expire leases, start due
    /// retries and replays, reconcile due doubts, settle what was sent. Returns how many
    /// actions it moved on.
    pub async fn sweep_once(&self) -> Result<usize, WorkerError> {
        let (mut work, _) = self.sweep(self.config.batch).await?;
        work.extend(self.claim_stranded(self.config.batch).await?);
        let n = work.len();
        let mut executes = JoinSet::new();
        let mut reconciles = JoinSet::new();
        for w in work {
            match w {
                Work::Execute(s) => {
                    let call = self.execute(&s);
                    executes.spawn(async move { (s, call.await) });
                }
                Work::Reconcile(job) => {
                    let me = self.clone();
                    reconciles.spawn(async move { me.reconcile(job).await });
                }
            }
        }
        let mut items = vec![];
        while let Some(r) = executes.join_next().await {
            if let Ok(item) = r {
                items.push(item);
            }
        }
        self.settle(&items).await?;
        while reconciles.join_next().await.is_some() {}
        Ok(n)
    }

    /// One sweep: expire leases, then start due retries and plan due doubts. Also says
    /// whether it took as many due actions as it could (more may be waiting).
    async fn sweep(&self, limit: u32) -> Result<(Vec<Work>, bool), WorkerError> {
        let now = Utc::now();
        let mut tx = self.store.pool().begin().await?;
        let expired = queue::expire_leases(&mut tx, limit, &self.config.id, now).await?;
        if !expired.is_empty() {
            tracing::info!(
                count = expired.len(),
                "leases expired; actions now in doubt"
            );
        }
        let mut work = vec![];
        let mut changes = vec![];
        let mut new_attempts = vec![];
        self.take_approvals(
            &mut tx,
            limit,
            now,
            &mut work,
            &mut changes,
            &mut new_attempts,
        )
        .await?;
        let due = queue::take_due(&mut tx, limit).await?;
        let full = due.len() as u32 >= limit;
        if due.is_empty() && changes.is_empty() {
            tx.commit().await?;
            return Ok((vec![], false));
        }
        let ids: Vec<uuid::Uuid> = due.iter().map(|r| r.action_id.as_uuid()).collect();
        let mut all_attempts = attempts::load(&mut *tx, &ids).await?;
        let mut reconcile_leases = vec![];
        for row in due {
            let rows = all_attempts.remove(&row.action_id).unwrap_or_default();
            let history: Vec<_> = rows.iter().map(|a| a.record()).collect();
            let Some(cell) = self.cells.get(&row.cell).cloned() else {
                tracing::error!(action = %row.action_id, cell = %row.cell, "due action for a cell this worker lacks; leaving it to another worker");
                continue;
            };
            let event = match row.state {
                State::RetryScheduled => Event::RetryDue,
                _ => match plan_in_doubt(
                    cell.profile(),
                    &history,
                    row.key_generation,
                    row.doubt_since.unwrap_or(now),
                    now,
                ) {
                    InDoubtPlan::Replay => Event::Replay,
                    InDoubtPlan::AdoptSuccess { attempt } => {
                        let receipt = rows
                            .iter()
                            .find(|a| a.number as u32 == attempt)
                            .and_then(|a| a.detail.as_ref())
                            .map(|d| d["receipt"].clone());
                        let mut c = Change::new(&row, Event::ReconciledHappened, now)?.reason(
                            Some(format!(
                                "attempt {attempt} recorded success after its lease expired"
                            )),
                        );
                        c.receipt = receipt;
                        changes.push(c);
                        continue;
                    }
                    InDoubtPlan::GiveUp { reason } => {
                        changes.push(Change::new(&row, Event::GiveUp, now)?.reason(Some(reason)));
                        continue;
                    }
                    InDoubtPlan::Reconcile => {
                        reconcile_leases
                            .push((row.action_id.as_uuid(), cell.profile().call_timeout * 2));
                        work.push(Work::Reconcile(ReconcileJob {
                            row,
                            cell,
                            attempts: rows,
                        }));
                        continue;
                    }
                },
            };
            match steps::start_attempt(&row, &cell, &history, event, self.lessee(), now) {
                Ok((change, attempt, s)) => {
                    changes.push(change);
                    new_attempts.push(attempt);
                    work.push(Work::Execute(s));
                }
                Err(e) => {
                    tracing::error!(action = %row.action_id, error = %e, "guard refused a due retry; holding it for an hour");
                    reconcile_leases.push((row.action_id.as_uuid(), Duration::from_secs(3600)));
                }
            }
        }
        inbox::hold(&mut tx, &reconcile_leases).await?;
        let writes = inbox::AttemptWrites {
            start: &new_attempts,
            ..Default::default()
        };
        let applied = inbox::apply_with(&mut tx, &changes, writes, &self.config.id).await?;
        tx.commit().await?;
        applied.record();
        work.retain(|w| match w {
            Work::Execute(s) => applied.contains(&s.row.action_id),
            Work::Reconcile(_) => true,
        });
        Ok((work, full))
    }

    /// Start approved actions (the approval is the policy gate passing; the attempt is
    /// written ahead like any first attempt) and reject those whose approval window ended.
    async fn take_approvals(
        &self,
        tx: &mut PgConnection,
        limit: u32,
        now: chrono::DateTime<Utc>,
        work: &mut Vec<Work>,
        changes: &mut Vec<Change>,
        new_attempts: &mut Vec<NewAttempt>,
    ) -> Result<(), WorkerError> {
        for (row, approval) in queue::take_approvals(tx, limit, now).await? {
            let Some(approval) = approval else {
                changes.push(Change::new(&row, Event::Reject, now)?.reason(Some(format!(
                    "approval expired: no decision within {:?}",
                    self.config.approval_ttl
                ))));
                continue;
            };
            let Some(cell) = self.cells.get(&row.cell).cloned() else {
                tracing::error!(action = %row.action_id, cell = %row.cell, "approved action for a cell this worker lacks; leaving it to another worker");
                continue;
            };
            match steps::start_attempt(&row, &cell, &[], Event::Approve, self.lessee(), now) {
                Ok((change, attempt, s)) => {
                    // The worker moves it; the person who decided is named in the audit.
                    changes.push(change.reason(Some(approval)));
                    new_attempts.push(attempt);
                    work.push(Work::Execute(s));
                }
                Err(e) => {
                    tracing::error!(action = %row.action_id, error = %e, "cannot start an approved action")
                }
            }
        }
        Ok(())
    }

    /// Ask the partner (through the partner stack) and apply the verdict with a
    /// compare-and-set.
    async fn reconcile(&self, job: ReconcileJob) {
        let call = PartnerCall {
            cell: job.cell.clone(),
            action: job.row.action_id,
            args: job.row.args.clone(),
            trace: job.row.trace.clone(),
            op: Op::Reconcile(steps::cell_attempts(&job.attempts)),
        };
        let Ok(answer) = self.partner.clone().oneshot(call).await;
        let verdict = answer.verdict();
        tracing::debug!(action = %job.row.action_id, verdict = verdict.class(), "reconciled");
        let change = steps::verdict_change(&job, &verdict, Utc::now(), sample());
        let result = async {
            let mut tx = self.store.pool().begin().await?;
            let applied =
                inbox::apply(&mut tx, std::slice::from_ref(&change), &self.config.id).await?;
            tx.commit().await?;
            applied.record();
            Ok::<_, WorkerError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(action = %job.row.action_id, error = %e, "could not record verdict; the action stays in doubt");
        }
    }
}

/// Count what a committed receive step did: its transitions and the redeliveries it
/// acknowledged without a partner call.
/// Count a committed settle of `asked` outcomes; how many compare-and-sets held.
fn settled(applied: &inbox::Applied, asked: usize) -> usize {
    applied.record();
    if applied.len() < asked {
        tracing::info!(
            lost = asked - applied.len(),
            "some outcomes arrived after the action moved on; kept in their attempt rows"
        );
    }
    applied.len()
}

fn counted(applied: &inbox::Applied, report: &ReceiveReport) {
    applied.record();
    metrics::duplicate_suppressed(metrics::Layer::Inbox, report.duplicates as u64);
}

impl From<idem_core::TransitionError> for WorkerError {
    fn from(e: idem_core::TransitionError) -> Self {
        WorkerError::Store(StoreError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_under_way_holds_its_room_until_its_ticket_is_dropped() {
        let room = Room::new(4);
        assert_eq!((room.free_calls(12), room.free_slots()), (16, 16));
        let first = room.ticket(8);
        assert_eq!(
            (room.free_calls(12), room.free_slots()),
            (8, 8),
            "a second claim sees only what the first was not promised"
        );
        assert_eq!(
            room.sweep_room(),
            4,
            "a sweep may queue behind a claim's calls"
        );
        let second = room.ticket(8);
        assert_eq!((room.free_calls(12), room.free_slots()), (0, 0));
        assert_eq!(
            room.sweep_room(),
            0,
            "but not take places promised to claims"
        );
        drop(first);
        assert_eq!((room.free_calls(12), room.free_slots()), (8, 8));
        drop(second);
        assert_eq!((room.free_calls(12), room.free_slots()), (16, 16));
    }
}
