//! Request tracing (`--otlp-endpoint`): the shard's half of OpenTelemetry.
//! It owns the sampling decision, span ids, the span a shard is working
//! under right now, and the plain records a finished span or a measured
//! request leaves as; the exporter (`adapters::otel`) turns them into OTLP
//! on its own thread. Nothing here does I/O or touches shared state: a
//! shard hands records to a [`TraceSink`] that never blocks (a full queue
//! drops the record and counts it).
//!
//! Sampling is parent-based: a request whose W3C `traceparent` (in
//! `params._meta`, else the HTTP header) is sampled is always traced, one
//! that is not sampled never is, and one without a parent is traced with
//! probability `--trace-sample-ratio` (decided from its new trace id, as
//! OpenTelemetry's `TraceIdRatioBased` does). With tracing off no
//! [`Tracer`] exists and a request pays one `OnceCell` check.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

/// How many duration samples a shard collects before handing them over
/// (the control loop also hands over what it has every tick).
pub(crate) const SAMPLES_PER_BATCH: usize = 1024;

/// A caller's W3C trace context (`traceparent`, and `tracestate` when sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    pub state: Option<Box<str>>,
}

impl TraceParent {
    /// Parses a `traceparent` value (W3C Trace Context level 1: version 00
    /// exactly; a later version's first four fields, as the spec allows).
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim().as_bytes();
        if v.len() < 55 {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        let exact = version == 0;
        if version == 0xff || (exact && v.len() != 55) || (!exact && v.len() > 55 && v[55] != b'-')
        {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state: None,
        })
    }
}

/// Two lower-case hex digits (W3C forbids upper case).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// A span being recorded on this shard: what its children point to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server,
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue {
    Str(Box<str>),
    Int(i64),
}

/// A finished span, as it leaves the shard.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// None: a root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent is the client's (from `traceparent`), not ours.
    pub parent_remote: bool,
    pub trace_state: Option<Box<str>>,
    pub kind: SpanKind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attrs: Vec<(&'static str, AttrValue)>,
    /// The span's status is Error with this description.
    pub error: Option<String>,
}

/// One served request, for the `mcp.server.operation.duration` histogram.
#[derive(Debug, Clone)]
pub(crate) struct OpSample {
    pub method: &'static str,
    /// `gen_ai.tool.name` or `gen_ai.prompt.name`, when the method names one.
    pub target: Option<(&'static str, Box<str>)>,
    pub protocol_version: Option<&'static str>,
    /// `error.type`: the JSON-RPC error code, or `tool_error`.
    pub error_type: Option<Box<str>>,
    pub duration: Duration,
}

/// Hands a span finished off the shard (by an adapter's thread) to the
/// exporter; false when it was dropped at the queue's bound.
pub(crate) type SpanOut = Box<dyn Fn(SpanRecord) -> bool + Send>;

/// A child span whose work finishes on another thread (a store write:
/// queued by the request, committed by the writer). Plain data, so it can
/// travel with the work.
#[derive(Debug, Clone)]
pub(crate) struct DetachedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: [u8; 8],
    pub name: &'static str,
    pub started: SystemTime,
}

impl DetachedSpan {
    /// The finished span, ended now.
    pub fn finish(
        self,
        attrs: Vec<(&'static str, AttrValue)>,
        error: Option<String>,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: Some(self.parent_span_id),
            parent_remote: false,
            trace_state: None,
            kind: SpanKind::Internal,
            name: self.name.to_string(),
            start: self.started,
            end: SystemTime::now(),
            attrs,
            error,
        }
    }
}

/// Where a shard's spans and samples go; never blocks.
pub(crate) trait TraceSink {
    /// False when the record was dropped at the queue's bound.
    fn span(&self, span: SpanRecord) -> bool;
    /// False when the batch was dropped at the queue's bound.
    fn samples(&self, batch: Vec<OpSample>) -> bool;
}

/// A shard's tracer: sampling, ids, the current span, and its sink. Cheap
/// to clone (a child span keeps one to record itself).
#[derive(Clone)]
pub(crate) struct Tracer(std::rc::Rc<Inner>);

struct Inner {
    sink: Box<dyn TraceSink>,
    /// A trace without a sampled parent is kept when its id's low 64 bits
    /// fall below this (ratio × 2^64).
    threshold: u64,
    rng: Cell<u64>,
    current: Cell<Option<SpanCtx>>,
    samples: RefCell<Vec<OpSample>>,
    /// Spans and sample batches dropped at the sink's bound.
    dropped: Cell<u64>,
}

impl Tracer {
    pub fn new(sink: Box<dyn TraceSink>, sample_ratio: f64, seed: u64) -> Self {
        assert!((0.0..=1.0).contains(&sample_ratio), "validated");
        let threshold = if sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (sample_ratio * u64::MAX as f64) as u64
        };
        Self(std::rc::Rc::new(Inner {
            sink,
            threshold,
            rng: Cell::new(seed | 1),
            current: Cell::new(None),
            samples: RefCell::new(Vec::new()),
            dropped: Cell::new(0),
        }))
    }

    /// 64 random bits (xorshift64*: ids need to be unique, not secret).
    fn next_u64(&self) -> u64 {
        let mut x = self.0.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn span_id(&self) -> [u8; 8] {
        loop {
            let id = self.next_u64();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    /// The context of a new server span for a request with `parent`, or
    /// None when the request is not sampled.
    pub fn sample(&self, parent: Option<&TraceParent>) -> Option<SpanCtx> {
        match parent {
            Some(p) if p.sampled => Some(SpanCtx {
                trace_id: p.trace_id,
                span_id: self.span_id(),
            }),
            Some(_) => None,
            None => {
                let low = self.next_u64();
                if low >= self.0.threshold && self.0.threshold != u64::MAX {
                    return None;
                }
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&low.to_be_bytes());
                if trace_id == [0; 16] {
                    return None;
                }
                Some(SpanCtx {
                    trace_id,
                    span_id: self.span_id(),
                })
            }
        }
    }

    /// Makes `span` current; returns what was, for [`Tracer::leave`].
    pub fn enter(&self, span: Option<SpanCtx>) -> Option<SpanCtx> {
        self.0.current.replace(span)
    }

    pub fn leave(&self, previous: Option<SpanCtx>) {
        self.0.current.set(previous);
    }

    /// A child of the current span, if one is recording.
    pub fn child(&self, name: String, attrs: Vec<(&'static str, AttrValue)>) -> Option<ChildSpan> {
        let parent = self.0.current.get()?;
        Some(ChildSpan {
            tracer: self.clone(),
            ctx: SpanCtx {
                trace_id: parent.trace_id,
                span_id: self.span_id(),
            },
            parent: parent.span_id,
            name,
            start: SystemTime::now(),
            attrs,
        })
    }

    /// A child of the current span that another thread will finish.
    pub fn detached(&self, name: &'static str) -> Option<DetachedSpan> {
        let parent = self.0.current.get()?;
        Some(DetachedSpan {
            trace_id: parent.trace_id,
            span_id: self.span_id(),
            parent_span_id: parent.span_id,
            name,
            started: SystemTime::now(),
        })
    }

    /// Hands a finished span to the sink.
    pub fn finish(&self, span: SpanRecord) {
        if !self.0.sink.span(span) {
            self.0.dropped.set(self.0.dropped.get() + 1);
        }
    }

    /// Adds one request's duration; hands a full batch over.
    pub fn sample_duration(&self, sample: OpSample) {
        let mut s = self.0.samples.borrow_mut();
        s.push(sample);
        if s.len() >= SAMPLES_PER_BATCH {
            let batch = std::mem::take(&mut *s);
            drop(s);
            self.hand_over(batch);
        }
    }

    /// Hands over whatever samples are waiting (the control loop's tick).
    pub fn flush_samples(&self) {
        let batch = std::mem::take(&mut *self.0.samples.borrow_mut());
        if !batch.is_empty() {
            self.hand_over(batch);
        }
    }

    fn hand_over(&self, batch: Vec<OpSample>) {
        if !self.0.sink.samples(batch) {
            self.0.dropped.set(self.0.dropped.get() + 1);
        }
    }

    /// Spans and sample batches dropped at the sink's bound so far.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.get()
    }
}

/// A child span started under the current one; [`ChildSpan::end`]
/// records it.
pub(crate) struct ChildSpan {
    tracer: Tracer,
    pub ctx: SpanCtx,
    parent: [u8; 8],
    name: String,
    start: SystemTime,
    attrs: Vec<(&'static str, AttrValue)>,
}

impl ChildSpan {
    /// Records the span as ended now; `error` sets its status.
    pub fn end(self, error: Option<String>) {
        self.tracer.finish(SpanRecord {
            trace_id: self.ctx.trace_id,
            span_id: self.ctx.span_id,
            parent_span_id: Some(self.parent),
            parent_remote: false,
            trace_state: None,
            kind: SpanKind::Internal,
            name: self.name,
            start: self.start,
            end: SystemTime::now(),
            attrs: self.attrs,
            error,
        });
    }
}

/// Runs `fut` with `span` current on `tracer` while it is polled, so
/// whatever it starts (a hop, a command, a store write) becomes a child.
pub(crate) struct InSpan<F> {
    pub fut: F,
    pub span: SpanCtx,
    pub core: std::rc::Rc<crate::server::core::Core>,
}

impl<F: Future + Unpin> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let tracer = this.core.tracer().expect("InSpan only wraps traced work");
        let previous = tracer.enter(Some(this.span));
        let out = Pin::new(&mut this.fut).poll(cx);
        tracer.leave(previous);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_per_w3c() {
        let p =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(p.trace_id[0], 0x0a);
        assert_eq!(p.span_id[7], 0x31);
        assert!(p.sampled);
        let p =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!p.sampled);
        // A later version may append fields after a dash.
        assert!(TraceParent::parse(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"
        )
        .is_some());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    struct Keep(std::rc::Rc<RefCell<Vec<SpanRecord>>>);
    impl TraceSink for Keep {
        fn span(&self, span: SpanRecord) -> bool {
            self.0.borrow_mut().push(span);
            true
        }
        fn samples(&self, _: Vec<OpSample>) -> bool {
            true
        }
    }

    #[test]
    fn sampling_follows_the_parent_then_the_ratio() {
        let kept = std::rc::Rc::new(RefCell::new(Vec::new()));
        let never = Tracer::new(Box::new(Keep(kept.clone())), 0.0, 7);
        let sampled = TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let unsampled =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        let s = never
            .sample(sampled.as_ref())
            .expect("a sampled parent is traced");
        assert_eq!(s.trace_id, sampled.unwrap().trace_id);
        assert!(never.sample(unsampled.as_ref()).is_none());
        assert!((0..1000).all(|_| never.sample(None).is_none()));
        let always = Tracer::new(Box::new(Keep(kept.clone())), 1.0, 7);
        assert!((0..1000).all(|_| always.sample(None).is_some()));
        assert!(always.sample(unsampled.as_ref()).is_none());
        let tenth = Tracer::new(Box::new(Keep(kept)), 0.1, 7);
        let n = (0..10_000).filter(|_| tenth.sample(None).is_some()).count();
        assert!((700..1300).contains(&n), "{n} of 10000 at 10%");
    }
}
