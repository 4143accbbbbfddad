//! idem's metrics, as OpenTelemetry instruments, exported on a Prometheus `/metrics`
//! endpoint and — when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_METRICS_ENDPOINT`) is set — over
//! OTLP/HTTP.
//!
//! Two kinds:
//! - **event counters**, counted where the event happens in this process: actions settled
//!   by cell and outcome, duplicates suppressed by layer (enqueue, inbox, partner replay),
//!   in_doubt entered and resolved, reconcile verdicts. Counted when the change is applied;
//!   a transaction that then rolls back (rare: the commit right after fails) over-counts.
//! - **fleet gauges**, read from PostgreSQL by whoever calls [`observe_fleet`] (the API
//!   server before each scrape, and every few seconds for OTLP): approvals pending,
//!   needs_human open, in_doubt open, actions by cell and state, outbox depth and relay lag;
//!   and, in a Kafka worker, librdkafka's consumer lag per partition.
//!
//! Until [`Metrics::install`] runs, recording is a no-op (libraries and tests pay nothing).

use std::sync::{Mutex, OnceLock};

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics exporter: {0}")]
    Exporter(String),
}

/// The event counters.
#[derive(Debug)]
struct Instruments {
    settled: Counter<u64>,
    duplicates: Counter<u64>,
    doubt_entered: Counter<u64>,
    doubt_resolved: Counter<u64>,
    verdicts: Counter<u64>,
    partner_calls: Counter<u64>,
    partner_seconds: Histogram<f64>,
    rate_limited: Counter<u64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Latest fleet figures, read by the observable gauges at collection time.
static FLEET: Mutex<Option<Fleet>> = Mutex::new(None);

/// What the database says about the whole fleet at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// (cell, state, count) for every non-empty pair.
    pub actions: Vec<(String, String, u64)>,
    /// Rows waiting in the outbox for a relay (Kafka transport) or a worker (direct).
    pub outbox_depth: u64,
    /// Age of the oldest outbox row, seconds (0 when empty).
    pub outbox_lag_seconds: f64,
}

impl Fleet {
    fn count(&self, state: &str) -> u64 {
        self.actions
            .iter()
            .filter(|(_, s, _)| s == state)
            .map(|(_, _, n)| n)
            .sum()
    }
}

/// Messages behind the high watermark per (topic, partition) this process consumes.
static CONSUMER_LAG: Mutex<Vec<(String, i32, i64)>> = Mutex::new(Vec::new());

/// Replace this process's consumer lag figures (from librdkafka's statistics).
pub fn observe_consumer_lag(lags: Vec<(String, i32, i64)>) {
    if let Ok(mut l) = CONSUMER_LAG.lock() {
        *l = lags;
    }
}

/// Replace the fleet figures the gauges report.
pub fn observe_fleet(fleet: Fleet) {
    if let Ok(mut f) = FLEET.lock() {
        *f = Some(fleet);
    }
}

fn fleet() -> Option<Fleet> {
    FLEET.lock().ok().and_then(|f| f.clone())
}

/// The running meter provider and the Prometheus registry it feeds.
#[derive(Debug)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

impl Metrics {
    /// Build the provider (Prometheus reader, plus OTLP/HTTP when the standard environment
    /// variables name an endpoint), make it global and start counting. Call once, early,
    /// outside an async context when OTLP is configured (its HTTP client blocks).
    pub fn install(service: &str) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let prom = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prom);
        if otlp_configured() {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
                .map_err(|e| MetricsError::Exporter(e.to_string()))?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(std::time::Duration::from_secs(10))
                    .build(),
            );
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        let meter = provider.meter("idem");
        let _ = INSTRUMENTS.set(instruments(&meter));
        register_gauges(&meter);
        Ok(Self { provider, registry })
    }

    /// The Prometheus text exposition of every idem metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = vec![];
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Flush OTLP and stop (blocks; call outside an async context or in spawn_blocking).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "metrics shutdown");
        }
    }
}

fn instruments(meter: &Meter) -> Instruments {
    Instruments {
        settled: meter
            .u64_counter("idem.actions.settled")
            .with_description("Actions settled, by cell and outcome (succeeded is one external effect for an effectful cell)")
            .build(),
        duplicates: meter
            .u64_counter("idem.duplicates.suppressed")
            .with_description("Repeated requests that did not become a second effect, by layer: enqueue (same id and arguments), inbox (redelivery), partner_replay (the partner answered a same-key resend with the first result), reconcile (found done, not resent)")
            .build(),
        doubt_entered: meter
            .u64_counter("idem.in_doubt.entered")
            .with_description("Actions that entered in_doubt (the answer was lost), by cell")
            .build(),
        doubt_resolved: meter
            .u64_counter("idem.in_doubt.resolved")
            .with_description("Actions that left in_doubt, by cell and how (replay, reconciled_happened, reconciled_not_happened, give_up, …)")
            .build(),
        verdicts: meter
            .u64_counter("idem.reconcile.verdicts")
            .with_description("Reconciliation verdicts, by cell and verdict (happened, not_happened, unknown)")
            .build(),
        partner_calls: meter
            .u64_counter("idem.partner.calls")
            .with_description("Partner calls, by cell, operation (execute, reconcile) and result class")
            .build(),
        partner_seconds: meter
            .f64_histogram("idem.partner.duration")
            .with_unit("s")
            .with_description("Time one partner call took, by cell and operation")
            .build(),
        rate_limited: meter
            .u64_counter("idem.partner.rate_limited")
            .with_description("Requests idem held back to keep a cell's documented rate: not sent, retried after")
            .build(),
    }
}

fn register_gauges(meter: &Meter) {
    let by_state = |name: &'static str, state: &'static str, what: &'static str| {
        meter
            .u64_observable_gauge(name)
            .with_description(what)
            .with_callback(move |o| {
                if let Some(f) = fleet() {
                    o.observe(f.count(state), &[]);
                }
            })
            .build()
    };
    by_state(
        "idem.approvals.pending",
        "awaiting_approval",
        "Actions awaiting a person's approval",
    );
    by_state(
        "idem.needs_human.open",
        "needs_human",
        "Actions a person must resolve",
    );
    by_state(
        "idem.in_doubt.open",
        "in_doubt",
        "Actions whose outcome is being reconciled",
    );
    meter
        .u64_observable_gauge("idem.actions")
        .with_description("Actions by cell and state")
        .with_callback(|o| {
            if let Some(f) = fleet() {
                for (cell, state, n) in &f.actions {
                    o.observe(
                        *n,
                        &[
                            KeyValue::new("cell", cell.clone()),
                            KeyValue::new("state", state.clone()),
                        ],
                    );
                }
            }
        })
        .build();
    meter
        .i64_observable_gauge("idem.kafka.consumer_lag")
        .with_description(
            "Messages behind the high watermark, per topic and partition this process consumes",
        )
        .with_callback(|o| {
            if let Ok(lags) = CONSUMER_LAG.lock() {
                for (topic, partition, lag) in lags.iter() {
                    o.observe(
                        *lag,
                        &[
                            KeyValue::new("topic", topic.clone()),
                            KeyValue::new("partition", i64::from(*partition)),
                        ],
                    );
                }
            }
        })
        .build();
    meter
        .u64_observable_gauge("idem.outbox.depth")
        .with_description("Outbox rows not yet taken by a relay or worker")
        .with_callback(|o| {
            if let Some(f) = fleet() {
                o.observe(f.outbox_depth, &[]);
            }
        })
        .build();
    meter
        .f64_observable_gauge("idem.outbox.lag")
        .with_unit("s")
        .with_description("Age of the oldest outbox row (relay lag)")
        .with_callback(|o| {
            if let Some(f) = fleet() {
                o.observe(f.outbox_lag_seconds, &[]);
            }
        })
        .build();
}

fn with<F: FnOnce(&Instruments)>(f: F) {
    if let Some(i) = INSTRUMENTS.get() {
        f(i);
    }
}

/// Where a repeated request was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Enqueue,
    Inbox,
    PartnerReplay,
    Reconcile,
}

impl Layer {
    fn as_str(self) -> &'static str {
        match self {
            Layer::Enqueue => "enqueue",
            Layer::Inbox => "inbox",
            Layer::PartnerReplay => "partner_replay",
            Layer::Reconcile => "reconcile",
        }
    }
}

/// A repeated request did not become a second effect.
pub fn duplicate_suppressed(layer: Layer, n: u64) {
    if n > 0 {
        with(|i| {
            i.duplicates
                .add(n, &[KeyValue::new("layer", layer.as_str())])
        });
    }
}

/// One applied state change, as the store recorded it.
pub fn transition(cell: &str, from: &str, to: &str, event: &str) {
    with(|i| {
        let cell_kv = KeyValue::new("cell", cell.to_owned());
        if matches!(
            to,
            "succeeded" | "failed" | "rejected" | "needs_human" | "dead"
        ) {
            i.settled.add(
                1,
                &[cell_kv.clone(), KeyValue::new("outcome", to.to_owned())],
            );
        }
        if to == "in_doubt" && from != "in_doubt" {
            i.doubt_entered.add(1, std::slice::from_ref(&cell_kv));
        }
        if from == "in_doubt" && to != "in_doubt" {
            i.doubt_resolved.add(
                1,
                &[cell_kv.clone(), KeyValue::new("how", event.to_owned())],
            );
        }
        if let Some(verdict) = event.strip_prefix("reconciled_") {
            i.verdicts
                .add(1, &[cell_kv, KeyValue::new("verdict", verdict.to_owned())]);
        }
    });
}

/// One partner call finished: `op` is `execute` or `reconcile`, `class` its outcome class.
pub fn partner_call(cell: &str, op: &'static str, class: &'static str, seconds: f64) {
    with(|i| {
        let cell = KeyValue::new("cell", cell.to_owned());
        let op = KeyValue::new("op", op);
        i.partner_seconds
            .record(seconds, &[cell.clone(), op.clone()]);
        i.partner_calls
            .add(1, &[cell, op, KeyValue::new("class", class)]);
    });
}

/// A request was held back by the cell's rate limit and not sent.
pub fn rate_limited(cell: &str) {
    with(|i| {
        i.rate_limited
            .add(1, &[KeyValue::new("cell", cell.to_owned())])
    });
}

/// A tracer provider exporting spans over OTLP/HTTP, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `…_TRACES_ENDPOINT`) is set; `None` otherwise. Build it outside an async context.
pub fn otlp_tracer(
    service: &str,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, MetricsError> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| MetricsError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build(),
    ))
}
