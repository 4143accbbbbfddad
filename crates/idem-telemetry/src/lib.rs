//! Trace context across idem's hops.
//!
//! An action crosses a database commit, a relay, a broker and a worker before it reaches
//! the partner. The W3C `traceparent`/`tracestate` pair rides along every hop (outbox row,
//! `idem.actions.trace`, Kafka headers, partner HTTP request), so one trace shows the whole
//! path from the agent's enqueuing span to the partner call. Spans are ordinary `tracing`
//! spans; they become OpenTelemetry spans when the subscriber has [`layer`] installed.
//! Without it the functions here return empty headers and cost next to nothing.

pub mod metrics;
pub mod process;

use std::collections::BTreeMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// W3C trace context header names (lower case, as HTTP/2 and Kafka headers carry them).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The trace headers of one hop: at most `traceparent` and `tracestate`. Empty when no
/// trace is being recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TraceHeaders(BTreeMap<String, String>);

impl TraceHeaders {
    /// The headers that make a child of `span` on the other side of a hop.
    pub fn of(span: &Span) -> Self {
        let mut carrier = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        Self(
            carrier
                .into_iter()
                .filter(|(k, _)| k == TRACEPARENT || k == TRACESTATE)
                .collect(),
        )
    }

    /// The headers of the current span.
    pub fn current() -> Self {
        Self::of(&Span::current())
    }

    /// From any name/value pairs; keeps only the two trace headers.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .filter(|(k, _)| {
                    k.eq_ignore_ascii_case(TRACEPARENT) || k.eq_ignore_ascii_case(TRACESTATE)
                })
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect(),
        )
    }

    /// From the JSON object stored in the outbox and on the action; other keys ignored.
    pub fn from_json(v: &serde_json::Value) -> Self {
        match v.as_object() {
            Some(o) => Self::from_pairs(
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.as_str(), s))),
            ),
            None => Self::default(),
        }
    }

    /// The JSON object form (`{}` when empty).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The 32-hex-digit trace id, if the headers carry a valid traceparent.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    /// The remote parent these headers describe.
    pub fn context(&self) -> Context {
        let carrier: std::collections::HashMap<String, String> =
            self.0.clone().into_iter().collect();
        TraceContextPropagator::new().extract(&carrier)
    }

    /// Make `span` a child of the hop these headers came from. No-op when empty or invalid,
    /// or when the span is not recorded by OpenTelemetry.
    pub fn adopt_into(&self, span: &Span) {
        if self.is_empty() {
            return;
        }
        let cx = self.context();
        if cx.span().span_context().is_valid() {
            // Fails only when the span was already started with another parent or is
            // disabled; either way the span stays as it is.
            let _ = span.set_parent(cx);
        }
    }
}

/// A `tracing` layer that turns idem's spans into OpenTelemetry spans recorded by
/// `provider` (an OTLP exporter in production, an in-memory exporter in tests).
pub fn layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("idem"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn headers_cross_a_hop_and_keep_the_trace() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("agent.turn");
            let sent = root.in_scope(TraceHeaders::current);
            assert!(
                sent.get(TRACEPARENT).is_some(),
                "an active span yields a traceparent"
            );
            // Across the hop: only the JSON survives.
            let got = TraceHeaders::from_json(&sent.to_json());
            assert_eq!(got, sent);
            let child = tracing::info_span!("worker.execute");
            got.adopt_into(&child);
            let child_headers = TraceHeaders::of(&child);
            assert_eq!(child_headers.trace_id(), sent.trace_id());
            assert_ne!(child_headers.get(TRACEPARENT), sent.get(TRACEPARENT));
            drop(child);
            drop(root);
        });
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(
            spans[0].span_context.trace_id(),
            spans[1].span_context.trace_id()
        );
    }

    #[test]
    fn no_subscriber_means_no_headers() {
        let span = tracing::info_span!("unrecorded");
        assert!(span.in_scope(TraceHeaders::current).is_empty());
        TraceHeaders::default().adopt_into(&span);
        assert_eq!(
            TraceHeaders::from_json(&serde_json::json!("junk")),
            TraceHeaders::default()
        );
        let junk = TraceHeaders::from_pairs([("traceparent", "00-zz")]);
        assert_eq!(junk.trace_id(), None);
    }
}
