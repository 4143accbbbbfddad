//! `idem worker` and `idem sweep`: a worker's flags over the `[worker]` section, the
//! window check before start, the direct-Postgres or Kafka transport.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use idem_telemetry::metrics::Metrics;
use idem_worker::{Worker, WorkerConfig};

use crate::config::{self, Db};
use crate::kafka::KafkaArgs;
use crate::{cells, connect, shutdown_channel};

/// A worker's flags: each overrides its `[worker]` key in the configuration, where the
/// defaults are.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: Db,
    #[command(flatten)]
    pub cells: cells::CellArgs,
    /// Partner calls in flight at once (`worker.concurrency`, default 32).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Actions claimed or settled per transaction (`worker.batch`, default 64).
    #[arg(long)]
    pub batch: Option<u32>,
    /// `worker.poll_interval` in ms.
    #[arg(long)]
    pub poll_interval_ms: Option<u64>,
    /// `worker.sweep_interval` in ms.
    #[arg(long)]
    pub sweep_interval_ms: Option<u64>,
    /// Worker name in leases and audit rows.
    #[arg(long)]
    pub id: Option<String>,
    /// Serve this worker's counters and the fleet gauges at http://ADDR/metrics (needs a
    /// token with the read scope). OTLP export needs only OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where actions come from: the outbox directly, or a Kafka consumer group
    /// (`worker.transport`, default postgres).
    #[arg(long, value_enum)]
    pub transport: Option<config::Transport>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group (Kafka transport; `worker.group`, default idem-workers).
    #[arg(long)]
    pub group: Option<String>,
    /// Consumer group protocol: `consumer` (KIP-848, Kafka 4: the broker assigns, members
    /// come and go without stopping the others) or `classic` (cooperative-sticky; older
    /// brokers and librdkafka's mock cluster).
    #[arg(long, value_enum)]
    pub group_protocol: Option<config::GroupProtocol>,
    /// Static group membership for the classic protocol (`group.instance.id`): a worker
    /// restarted under the same id gets its partitions back without a rebalance. Unique
    /// per live worker (a supervisor slot, a pod name).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// How long settled actions are kept in the inbox, if a retention job deletes them
    /// (hours). The worker refuses to start if this is shorter than a cell's key window.
    #[arg(long)]
    pub inbox_retention_hours: Option<u64>,
    /// Seconds an action may wait for approval before it is rejected as expired
    /// (`worker.approval_ttl`, default 24h).
    #[arg(long)]
    pub approval_ttl_secs: Option<u64>,
    /// An action still `received` this long after enqueue (ms) is started by the sweeper
    /// from its inbox row: its delivery was lost (e.g. a Kafka message dropped by retention
    /// before any worker read it). Such starts give up per-key order, so keep this well
    /// above the normal delivery lag. 0: never (`worker.stranded_after`, default 10m).
    #[arg(long)]
    pub stranded_after_ms: Option<u64>,
    /// How long a lease runs without a heartbeat, in ms (`worker.lease`, default 10s): a
    /// killed worker's actions are in doubt, then replayed or reconciled, within about this.
    #[arg(long)]
    pub lease_ms: Option<u64>,
}

impl WorkerArgs {
    /// The `[worker]` section with this command's flags on top.
    pub fn effective(&self) -> config::WorkerSection {
        let mut w = config::get().worker.clone();
        let ms = Duration::from_millis;
        macro_rules! set {
            ($flag:expr, $field:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
        }
        set!(self.concurrency, w.concurrency);
        set!(self.batch, w.batch);
        set!(self.poll_interval_ms.map(ms), w.poll_interval);
        set!(self.sweep_interval_ms.map(ms), w.sweep_interval);
        set!(
            self.approval_ttl_secs.map(Duration::from_secs),
            w.approval_ttl
        );
        set!(self.stranded_after_ms.map(ms), w.stranded_after);
        set!(self.lease_ms.map(ms), w.lease);
        set!(self.transport, w.transport);
        set!(self.group, w.group);
        set!(self.group_protocol, w.group_protocol);
        if self.id.is_some() {
            w.id = self.id.clone();
        }
        if self.instance_id.is_some() {
            w.instance_id = self.instance_id.clone();
        }
        if self.metrics_listen.is_some() {
            w.metrics_listen = self.metrics_listen;
        }
        if let Some(h) = self.inbox_retention_hours {
            w.inbox_retention = Some(Duration::from_secs(h.saturating_mul(3600)));
        }
        w
    }
}

/// One worker per store (the first is the default store's): with several stores, each
/// gets an equal share of the concurrency and claims from its own store on its own loop,
/// so a store that is down holds back only its own actions.
async fn build(args: &WorkerArgs) -> Result<Vec<Worker>> {
    let w = args.effective();
    let stores = crate::connect_stores(&args.db, (w.concurrency as u32 / 4).clamp(4, 32)).await?;
    let n = stores.len();
    let mut config = WorkerConfig {
        concurrency: (w.concurrency / n).max(1),
        batch: w.batch.max(1),
        poll_interval: w.poll_interval,
        sweep_interval: w.sweep_interval,
        approval_ttl: w.approval_ttl.max(Duration::from_secs(1)),
        stranded_after: (!w.stranded_after.is_zero()).then_some(w.stranded_after),
        lease: w.lease.max(Duration::from_millis(300)),
        ..WorkerConfig::default()
    };
    if let Some(id) = &w.id {
        config.id = id.clone();
    }
    let registry = args.cells.registry().map_err(anyhow::Error::msg)?;
    args.cells.check(&registry).map_err(anyhow::Error::msg)?;
    // Window safety check: refuse to start rather than risk a replay outside a key window.
    for cell in registry.iter() {
        if let Err(why) = cell.profile().window_check(w.inbox_retention) {
            bail!("refusing to start: cell {}: {why}", cell.name());
        }
    }
    Ok(stores
        .iter()
        .map(|(name, store)| {
            let mut config = config.clone();
            if n > 1 {
                config.id = format!("{}@{name}", config.id);
            }
            Worker::builder(store.clone(), registry.clone())
                .config(config)
                .build()
        })
        .collect())
}

/// `idem sweep`: one pass, then exit.
pub async fn sweep(args: WorkerArgs) -> Result<()> {
    let mut n = 0;
    for worker in build(&args).await? {
        n += worker.sweep_once().await?;
    }
    println!("{n} actions moved on");
    Ok(())
}

pub async fn run(args: WorkerArgs, metrics: Arc<Metrics>) -> Result<()> {
    let settings = args.effective();
    let kafka = settings.transport == config::Transport::Kafka;
    let workers = build(&args).await?;
    if let Some(addr) = settings.metrics_listen {
        let state = idem_api::ApiState::new(
            connect(&args.db).await?,
            Arc::new(cells::CellArgs::registry(&args.cells).map_err(anyhow::Error::msg)?),
        )
        .with_metrics(metrics);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "worker metrics at /metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, idem_api::metrics::routes(state)).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let rx = shutdown_channel();
    if !kafka {
        let mut running = vec![];
        for worker in workers {
            tracing::info!(worker = worker.id(), transport = ?settings.transport, "worker started");
            let rx = rx.clone();
            running.push(tokio::spawn(async move { worker.run(rx).await }));
        }
        for r in running {
            r.await??;
        }
        return Ok(());
    }
    // Kafka: the consumer group delivers new actions; this process still sweeps (leases,
    // retries, doubts) but does not claim from the outbox, which the relay drains. With
    // several stores, one consumer group per store on that store's topics
    // (`KafkaConfig::for_store`): a message's topic names its home store, and a lane
    // writes its inbox and attempts there.
    let (specs, _) = args.db.stores().map_err(anyhow::Error::msg)?;
    let several = workers.len() > 1;
    let kafka = args.kafka.config()?;
    let mut running = vec![];
    for (worker, spec) in workers.into_iter().zip(&specs) {
        tracing::info!(worker = worker.id(), store = %spec.name, transport = ?settings.transport, "worker started");
        let worker = worker.without_outbox_claims();
        let (kafka, group) = if several {
            (
                kafka.for_store(&spec.name),
                format!("{}.{}", settings.group, spec.name),
            )
        } else {
            (kafka.clone(), settings.group.clone())
        };
        let mut topics: Vec<String> = worker
            .cells()
            .iter()
            .map(|cell| kafka.routing.topic_for(cell.name().as_str()))
            .collect();
        topics.sort();
        topics.dedup();
        let transport = idem_kafka::KafkaTransport::new(worker.clone(), kafka, {
            let mut t = idem_kafka::TransportConfig::new(&group, topics);
            t.protocol = settings.group_protocol.into();
            t.instance_id = settings.instance_id.clone().map(|i| {
                if several {
                    format!("{i}.{}", spec.name)
                } else {
                    i
                }
            });
            t.lane_capacity = settings.lane_capacity.max(1);
            t
        });
        let sweeper = worker.clone();
        let (sweep_rx, rx) = (rx.clone(), rx.clone());
        running.push(tokio::spawn(async move {
            sweeper.run(sweep_rx).await.map_err(anyhow::Error::from)
        }));
        running.push(tokio::spawn(async move {
            transport.run(rx).await.map_err(anyhow::Error::from)
        }));
    }
    for r in running {
        r.await??;
    }
    Ok(())
}
