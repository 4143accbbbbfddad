//! The partner call as a tower service, and the layers every call goes through: tracing,
//! the cell's rate limit, metrics and the timeout, around the cell itself.
//!
//! Retries and reconciliation are not layers: every resend needs its write-ahead row and the
//! guard's permission, so they stay in the state machine. A layer may only *not send* a
//! request (the rate limit answers `NotProcessed`, which the state machine retries) or bound
//! how long one runs (the timeout answers `Ambiguous`, which it reconciles).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use idem_cells::{Attempt, Cell};
use idem_core::{ActionId, ExecOutcome, RateLimit, Verdict};
use idem_telemetry::{metrics, TraceHeaders};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};
use tracing::Instrument;

/// One call to a partner through a cell.
#[derive(Debug, Clone)]
pub struct PartnerCall {
    pub cell: Arc<dyn Cell>,
    pub action: ActionId,
    pub args: serde_json::Value,
    /// The trace the call continues (the action's, or the delivering hop's).
    pub trace: TraceHeaders,
    pub op: Op,
}

/// Send an attempt written ahead, or ask whether earlier attempts had their effect.
#[derive(Debug, Clone)]
pub enum Op {
    Execute(Attempt),
    Reconcile(Vec<Attempt>),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Execute(_) => "execute",
            Op::Reconcile(_) => "reconcile",
        }
    }
}

/// What the partner call came to.
#[derive(Debug, Clone)]
pub enum PartnerAnswer {
    Executed(ExecOutcome),
    Reconciled(Verdict),
}

impl PartnerAnswer {
    fn class(&self) -> &'static str {
        match self {
            PartnerAnswer::Executed(o) => o.class(),
            PartnerAnswer::Reconciled(v) => v.class(),
        }
    }

    /// The outcome of an `Execute` call (a reconcile answer here is a layer's bug).
    pub fn outcome(self) -> ExecOutcome {
        match self {
            PartnerAnswer::Executed(o) => o,
            PartnerAnswer::Reconciled(v) => ExecOutcome::Ambiguous {
                reason: format!("a layer answered an execute call with a verdict ({v:?})"),
                replayed_error: false,
            },
        }
    }

    /// The verdict of a `Reconcile` call.
    pub fn verdict(self) -> Verdict {
        match self {
            PartnerAnswer::Reconciled(v) => v,
            PartnerAnswer::Executed(o) => Verdict::Unknown {
                reason: format!("a layer answered a reconcile call with an outcome ({o:?})"),
            },
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The composed partner service a worker calls. Never fails: every failure is an outcome.
pub type PartnerService = BoxCloneSyncService<PartnerCall, PartnerAnswer, Infallible>;

/// The default stack: tracing, rate limit, metrics, timeout, cell (outermost first).
pub fn default_stack() -> PartnerService {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(TraceLayer)
            .layer(RateLimitLayer::new())
            .layer(MetricsLayer)
            .layer(TimeoutLayer)
            .service(CellService),
    )
}

/// The innermost service: the cell's own `execute` or `reconcile`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CellService;

impl Service<PartnerCall> for CellService {
    type Response = PartnerAnswer;
    type Error = Infallible;
    type Future = BoxFuture<Result<PartnerAnswer, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, c: PartnerCall) -> Self::Future {
        Box::pin(async move {
            Ok(match &c.op {
                Op::Execute(a) => {
                    PartnerAnswer::Executed(c.cell.execute(c.action, &c.args, a).await)
                }
                Op::Reconcile(a) => {
                    PartnerAnswer::Reconciled(c.cell.reconcile(c.action, &c.args, a).await)
                }
            })
        })
    }
}

/// Bounds every call by the cell's timeout: an execute by `call_timeout + 1 s` (cells time
/// out themselves; this fences one that hangs) and answers `Ambiguous`; a reconcile by
/// `2 × call_timeout` (it may page) and answers `Unknown`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
}

impl<S> Service<PartnerCall> for Timeout<S>
where
    S: Service<PartnerCall, Response = PartnerAnswer, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = PartnerAnswer;
    type Error = Infallible;
    type Future = BoxFuture<Result<PartnerAnswer, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, c: PartnerCall) -> Self::Future {
        let timeout = c.cell.profile().call_timeout;
        let (limit, late) = match c.op {
            Op::Execute(_) => (
                timeout + Duration::from_secs(1),
                PartnerAnswer::Executed(ExecOutcome::Ambiguous {
                    reason: "call exceeded the cell's timeout".into(),
                    replayed_error: false,
                }),
            ),
            Op::Reconcile(_) => (
                timeout * 2,
                PartnerAnswer::Reconciled(Verdict::Unknown {
                    reason: "reconciliation timed out".into(),
                }),
            ),
        };
        let fut = self.inner.call(c);
        Box::pin(async move { tokio::time::timeout(limit, fut).await.unwrap_or(Ok(late)) })
    }
}

/// Counts calls by cell, operation and result class, and times them
/// (`idem.partner.calls`, `idem.partner.duration`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

impl<S> Service<PartnerCall> for Metered<S>
where
    S: Service<PartnerCall, Response = PartnerAnswer, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = PartnerAnswer;
    type Error = Infallible;
    type Future = BoxFuture<Result<PartnerAnswer, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, c: PartnerCall) -> Self::Future {
        let cell = c.cell.name().to_string();
        let op = c.op.name();
        let fut = self.inner.call(c);
        Box::pin(async move {
            let t = Instant::now();
            let answer = fut.await?;
            metrics::partner_call(&cell, op, answer.class(), t.elapsed().as_secs_f64());
            Ok(answer)
        })
    }
}

/// Each call in a span (`idem.execute` / `idem.reconcile`) that continues the action's
/// trace; the cell's HTTP client opens its `partner.request` span inside it.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;
    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Service<PartnerCall> for Traced<S>
where
    S: Service<PartnerCall, Response = PartnerAnswer, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = PartnerAnswer;
    type Error = Infallible;
    type Future = BoxFuture<Result<PartnerAnswer, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, c: PartnerCall) -> Self::Future {
        let span = match &c.op {
            Op::Execute(a) => tracing::info_span!(
                "idem.execute",
                action_id = %c.action,
                cell = %c.cell.name(),
                attempt = a.number,
            ),
            Op::Reconcile(_) => tracing::info_span!(
                "idem.reconcile",
                action_id = %c.action,
                cell = %c.cell.name(),
            ),
        };
        c.trace.adopt_into(&span);
        let fut = span.in_scope(|| self.inner.call(c));
        Box::pin(fut.instrument(span))
    }
}

/// Holds each cell's documented rate (its profile's `rate_limit`) for effect requests, in
/// this process: a request waits for its turn, at most half the call timeout counted from
/// when its attempt was written ahead (so it still ends inside its lease); past that it is
/// not sent and answers `NotProcessed` with a `retry_after`, which the state machine turns
/// into a retry. Reconciliation reads are not counted: partners limit them separately.
///
/// The limit is per worker process (N workers send up to N× the rate): a fleet-wide
/// limit would cost a database round trip per request.
#[derive(Debug, Clone, Default)]
pub struct RateLimitLayer {
    limiters: Arc<Mutex<HashMap<String, Limiter>>>,
}

impl RateLimitLayer {
    pub fn new() -> Self {
        Self::default()
    }
}

/// One cell's limiter, rebuilt if the cell's profile changes its rate.
#[derive(Debug, Clone)]
struct Limiter {
    rate: RateLimit,
    keyed: Arc<DefaultKeyedRateLimiter<String>>,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            limiters: self.limiters.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiters: Arc<Mutex<HashMap<String, Limiter>>>,
}

impl<S> RateLimited<S> {
    fn limiter(&self, cell: &str, rate: &RateLimit) -> Arc<DefaultKeyedRateLimiter<String>> {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(cell) {
            Some(l) if l.rate == *rate => l.keyed.clone(),
            _ => {
                let quota = Quota::per_second(rate.per_sec).allow_burst(rate.burst);
                let keyed = Arc::new(DefaultKeyedRateLimiter::keyed(quota));
                map.insert(
                    cell.to_owned(),
                    Limiter {
                        rate: rate.clone(),
                        keyed: keyed.clone(),
                    },
                );
                keyed
            }
        }
    }
}

/// The value the limit is counted by: the argument's value, or the whole cell.
fn limit_key(rate: &RateLimit, args: &serde_json::Value) -> String {
    match &rate.per_argument {
        None => String::new(),
        Some(a) => match &args[a.as_str()] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    }
}

impl<S> Service<PartnerCall> for RateLimited<S>
where
    S: Service<PartnerCall, Response = PartnerAnswer, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = PartnerAnswer;
    type Error = Infallible;
    type Future = BoxFuture<Result<PartnerAnswer, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, c: PartnerCall) -> Self::Future {
        let (Some(rate), Op::Execute(attempt)) = (c.cell.profile().rate_limit.clone(), &c.op)
        else {
            return Box::pin(self.inner.call(c));
        };
        let limiter = self.limiter(c.cell.name().as_str(), &rate);
        let key = limit_key(&rate, &c.args);
        let written = attempt.started_at;
        let budget = (c.cell.profile().call_timeout / 2)
            .saturating_sub((chrono::Utc::now() - written).to_std().unwrap_or_default());
        // The inner service was made ready by our own poll_ready: call it now, hold the
        // future until the limiter lets the request go.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(async move {
            if limiter.check_key(&key).is_err()
                && tokio::time::timeout(budget, limiter.until_key_ready(&key))
                    .await
                    .is_err()
            {
                metrics::rate_limited(c.cell.name().as_str());
                let every = Duration::from_secs(1) / rate.per_sec.get();
                return Ok(PartnerAnswer::Executed(ExecOutcome::NotProcessed {
                    reason: format!(
                        "held by idem to keep {}'s rate of {}/s{}: not sent",
                        c.cell.name(),
                        rate.per_sec,
                        rate.per_argument
                            .as_deref()
                            .map(|a| format!(" per {a}"))
                            .unwrap_or_default()
                    ),
                    retry_after: Some(every.max(Duration::from_millis(100))),
                }));
            }
            inner.call(c).await
        })
    }
}
