//! OTLP export (`--otlp-endpoint`): the thread that turns the shards'
//! finished spans and duration samples into OpenTelemetry data and sends
//! them to a collector over OTLP/HTTP (protobuf) with the maintained
//! `opentelemetry-otlp` exporter. Spans go to `<endpoint>/v1/traces` in
//! batches (at most [`SPANS_PER_EXPORT`], at least every
//! `--otlp-export-interval-ms`); `mcp.server.operation.duration` goes to
//! `<endpoint>/v1/metrics` from the SDK's periodic reader.
//!
//! Shards never wait for it: they hand records over a bounded queue
//! (`--otlp-queue-max` records; past it a record is dropped and counted as
//! `trace_dropped`). A collector that is down costs export errors (logged,
//! at most one line per [`ERROR_LOG_EVERY`]), never a request.

use std::borrow::Cow;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;

use crate::server::trace::{AttrValue, OpSample, SpanKind, SpanOut, SpanRecord, TraceSink};

/// Spans sent in one export request at most.
pub const SPANS_PER_EXPORT: usize = 512;
/// Export failures are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// The histogram's buckets, in seconds (the semantic conventions' advice
/// for `mcp.server.operation.duration`).
const DURATION_BUCKETS_S: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// `--otlp-endpoint` and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// The collector's base URL (`http://host:4318`).
    pub endpoint: String,
    /// Requests without a sampled parent traced with this probability.
    pub sample_ratio: f64,
    /// Records (spans, sample batches) queued for the exporter at most.
    pub queue_max: usize,
    /// Spans and metrics are exported at least this often.
    pub export_interval_ms: u64,
    /// One export request may take this long.
    pub timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("--otlp-endpoint {0:?}: an http:// URL (OTLP/HTTP; TLS is not supported)")]
    Endpoint(String),
    #[error("--otlp-endpoint: building the OTLP exporter: {0}")]
    Build(String),
    #[error("starting the OTLP exporter thread: {0}")]
    Thread(std::io::Error),
}

impl OtelConfig {
    pub fn validate(&self) -> Result<(), OtelError> {
        let rest = self
            .endpoint
            .strip_prefix("http://")
            .ok_or_else(|| OtelError::Endpoint(self.endpoint.clone()))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(OtelError::Endpoint(self.endpoint.clone()));
        }
        Ok(())
    }

    fn url(&self, signal: &str) -> String {
        format!("{}/v1/{signal}", self.endpoint.trim_end_matches('/'))
    }
}

pub(crate) enum Item {
    Span(SpanRecord),
    Samples(Vec<OpSample>),
}

/// The exporter thread; [`Exporter::finish`] exports what is left.
pub(crate) struct Exporter {
    join: JoinHandle<()>,
    /// How long the last exports may take: one span and one metrics
    /// request.
    finish_limit: Duration,
}

/// The exporter's queue: each shard and store writer sends through a clone.
#[derive(Clone)]
pub(crate) struct Queue(Sender<Item>);

impl TraceSink for Queue {
    fn span(&self, span: SpanRecord) -> bool {
        self.send(Item::Span(span))
    }

    fn samples(&self, batch: Vec<OpSample>) -> bool {
        self.send(Item::Samples(batch))
    }
}

impl Queue {
    fn send(&self, item: Item) -> bool {
        match self.0.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // The exporter is gone (shutting down): nothing to count.
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

impl Queue {
    /// A shard's sink.
    pub fn sink(&self) -> Box<dyn TraceSink> {
        Box::new(self.clone())
    }

    /// Where a store writer sends the spans of the writes it commits.
    pub fn span_out(&self) -> SpanOut {
        let q = self.clone();
        Box::new(move |span| q.span(span))
    }
}

impl Exporter {
    /// Starts the thread; it ends once every [`Queue`] clone is gone.
    pub fn start(cfg: &OtelConfig) -> Result<(Self, Queue), OtelError> {
        cfg.validate()?;
        let resource = Resource::builder_empty()
            .with_service_name("tessera")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let interval = Duration::from_millis(cfg.export_interval_ms);
        let mut spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.url("traces"))
            .with_timeout(timeout)
            .build()
            .map_err(|e| OtelError::Build(e.to_string()))?;
        spans.set_resource(&resource);
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.url("metrics"))
            .with_timeout(timeout)
            .build()
            .map_err(|e| OtelError::Build(e.to_string()))?;
        let meters = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(
                PeriodicReader::builder(metrics)
                    .with_interval(interval)
                    .build(),
            )
            .build();
        let (tx, rx) = bounded(cfg.queue_max);
        let join = std::thread::Builder::new()
            .name("tessera-otlp".into())
            .spawn(move || export_loop(rx, spans, meters, interval))
            .map_err(OtelError::Thread)?;
        Ok((
            Self {
                join,
                finish_limit: 2 * timeout + Duration::from_secs(1),
            },
            Queue(tx),
        ))
    }

    /// Waits (at most `limit`) until everything queued is exported; every
    /// [`Queue`] must be gone (the shards stopped).
    pub fn finish(self) {
        let limit = self.finish_limit;
        let until = Instant::now() + limit;
        while !self.join.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.join.is_finished() {
            let _ = self.join.join();
        } else {
            log::warn!("the OTLP exporter did not finish within {limit:?}");
        }
    }
}

fn export_loop(
    rx: Receiver<Item>,
    spans: opentelemetry_otlp::SpanExporter,
    meters: SdkMeterProvider,
    interval: Duration,
) {
    let scope = InstrumentationScope::builder("tessera")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let duration = meters
        .meter_with_scope(scope.clone())
        .f64_histogram("mcp.server.operation.duration")
        .with_unit("s")
        .with_description("MCP request duration as observed on the server")
        .with_boundaries(DURATION_BUCKETS_S.to_vec())
        .build();
    let mut batch: Vec<SpanData> = Vec::with_capacity(SPANS_PER_EXPORT);
    let mut errors = ErrorLog::default();
    let mut due = Instant::now() + interval;
    loop {
        let item = rx.recv_timeout(due.saturating_duration_since(Instant::now()));
        let done = matches!(item, Err(RecvTimeoutError::Disconnected));
        match item {
            Ok(Item::Span(s)) => batch.push(span_data(s, &scope)),
            Ok(Item::Samples(samples)) => record(&duration, samples),
            Err(_) => {}
        }
        if batch.len() >= SPANS_PER_EXPORT || Instant::now() >= due || done {
            if !batch.is_empty() {
                let sent = std::mem::replace(&mut batch, Vec::with_capacity(SPANS_PER_EXPORT));
                let n = sent.len();
                if let Err(e) = futures_executor::block_on(spans.export(sent)) {
                    errors.note(&format!("exporting {n} span(s): {e}"));
                }
            }
            due = Instant::now() + interval;
        }
        if done {
            break;
        }
    }
    if let Err(e) = meters.shutdown() {
        errors.note(&format!("the final metrics export: {e}"));
    }
    let _ = spans.shutdown();
}

/// Export errors, logged at most once per [`ERROR_LOG_EVERY`].
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    quiet: u64,
}

impl ErrorLog {
    fn note(&mut self, what: &str) {
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_EVERY) {
            self.quiet += 1;
            return;
        }
        log::warn!("otlp: {what} ({} more error(s) not logged)", self.quiet);
        self.last = Some(Instant::now());
        self.quiet = 0;
    }
}

fn record(histogram: &Histogram<f64>, samples: Vec<OpSample>) {
    let mut attrs = Vec::with_capacity(6);
    for s in samples {
        attrs.clear();
        attrs.push(KeyValue::new("mcp.method.name", s.method));
        if let Some((key, name)) = s.target {
            attrs.push(KeyValue::new(key, name.into_string()));
        }
        if s.method == "tools/call" {
            attrs.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
        }
        if let Some(v) = s.protocol_version {
            attrs.push(KeyValue::new("mcp.protocol.version", v));
        }
        if let Some(t) = s.error_type {
            if t.starts_with('-') {
                attrs.push(KeyValue::new("rpc.response.status_code", t.to_string()));
            }
            attrs.push(KeyValue::new("error.type", t.into_string()));
        }
        histogram.record(s.duration.as_secs_f64(), &attrs);
    }
}

fn span_data(s: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let state = s
        .trace_state
        .as_deref()
        .and_then(|t| t.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace_id),
            SpanId::from_bytes(s.span_id),
            TraceFlags::SAMPLED,
            false,
            state,
        ),
        parent_span_id: s.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: s.parent_remote,
        span_kind: match s.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Internal => OtelKind::Internal,
        },
        name: Cow::Owned(s.name),
        start_time: s.start,
        end_time: s.end,
        attributes: s
            .attrs
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    AttrValue::Str(s) => Value::from(s.into_string()),
                    AttrValue::Int(i) => Value::from(i),
                };
                KeyValue::new(k, value)
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match s.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}
