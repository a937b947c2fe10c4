//! Monitoring: Prometheus metrics ([`Metrics`], `GET /metrics`) and the
//! readiness probe ([`Readiness`], `GET /ready`).
//!
//! ```no_run
//! use switchboard::{hub::Hub, metrics::{Metrics, Readiness}, App};
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::new();
//! App::new()
//!     .state(hub.clone())
//!     .get("/health", || async { "ok" })
//!     .metrics("/metrics", Metrics::new().hub(&hub))
//!     .readiness("/ready", Readiness::new().hub(&hub))
//!     .serve("127.0.0.1:8000")
//!     .await
//! # }
//! ```
//!
//! Recording is off until [`App::metrics`] turns it on, and then costs one
//! relaxed atomic add per event on the hot paths: per message received,
//! per batch of frames written (not per frame), per read of the socket.
//! Labelled series (handshake outcomes, close codes, auth failures) are
//! recorded once per connection at most. Hub and backplane numbers are not
//! recorded at all: they are read from [`Hub::stats`] when scraped. The
//! text is the Prometheus exposition format 0.0.4, written by the
//! `prometheus-client` crate; the series are listed in
//! `docs/monitoring.md`.
//!
//! This module must not be reached from the codec, and must not take a
//! lock on a per-message path.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use http::{header, HeaderValue, StatusCode};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};
use switchboard_proto::CloseCode;

use crate::{
    app::App,
    extract::RequestContext,
    hub::Hub,
    response::{IntoResponse, Response},
};

type Labels<const N: usize> = [(&'static str, Cow<'static, str>); N];

/// The live instruments, shared by the app and every connection.
#[derive(Debug)]
pub(crate) struct Recorder {
    ws_open: Gauge,
    handshakes: Family<Labels<1>, Counter>,
    handshake_seconds: Histogram,
    messages_in: Counter,
    bytes_in: Counter,
    messages_out: Counter,
    bytes_out: Counter,
    closes: Family<Labels<2>, Counter>,
    rate_limited: Family<Labels<1>, Counter>,
    auth_failures: Family<Labels<1>, Counter>,
    sse_open: Gauge,
    /// The handshake series by outcome (index in [`OUTCOMES`]), each looked
    /// up in the family once: a handshake then costs one atomic add, not a
    /// lock, a label hash and a map probe.
    outcome_counters: [OnceLock<Counter>; OUTCOMES.len()],
    /// The close-frame series by direction (sent, received) and code label
    /// (index in [`CODE_LABELS`]), looked up once each, likewise.
    close_counters: [[OnceLock<Counter>; CODE_LABELS.len()]; 2],
}

/// Handshake outcomes, the label values of `switchboard_ws_handshakes`.
const OUTCOMES: [&str; 8] = [
    "accepted",
    "bad_request",
    "unauthorized",
    "forbidden",
    "limited",
    "unavailable",
    "error",
    "other",
];

/// Close-code label values: the registered codes 1000-1015, then the
/// folded application ranges and everything else.
const CODE_LABELS: [&str; 19] = [
    "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
    "1012", "1013", "1014", "1015", "3xxx", "4xxx", "other",
];

/// Close codes as label values: the registered codes by number, the
/// application ranges folded, so a peer cannot mint thousands of series.
fn code_label(code: CloseCode) -> usize {
    match code.0 {
        c @ 1000..=1015 => usize::from(c - 1000),
        3000..=3999 => 16,
        4000..=4999 => 17,
        _ => 18,
    }
}

impl Recorder {
    fn new(registry: &mut Registry) -> Recorder {
        let r = Recorder {
            ws_open: Gauge::default(),
            handshakes: Family::default(),
            // 100 µs to 2.5 s: an in-process handshake takes ~50 µs, one
            // behind auth and a loaded runtime milliseconds; the top bucket
            // is the default handshake timeout's order.
            handshake_seconds: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            messages_in: Counter::default(),
            bytes_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            closes: Family::default(),
            rate_limited: Family::default(),
            auth_failures: Family::default(),
            sse_open: Gauge::default(),
            outcome_counters: Default::default(),
            close_counters: Default::default(),
        };
        let reg = registry;
        reg.register(
            "switchboard_ws_connections",
            "Open WebSocket connections (accepted, writer still running)",
            r.ws_open.clone(),
        );
        reg.register(
            "switchboard_ws_handshakes",
            "WebSocket upgrade requests by outcome",
            r.handshakes.clone(),
        );
        reg.register_with_unit(
            "switchboard_ws_handshake_duration",
            "Time from an upgrade request to its answer",
            Unit::Seconds,
            r.handshake_seconds.clone(),
        );
        reg.register(
            "switchboard_ws_messages_received",
            "Data messages received from WebSocket peers",
            r.messages_in.clone(),
        );
        reg.register_with_unit(
            "switchboard_ws_received",
            "Payload bytes of data messages received (after permessage-deflate)",
            Unit::Bytes,
            r.bytes_in.clone(),
        );
        reg.register(
            "switchboard_ws_messages_sent",
            "Data messages written to WebSocket peers",
            r.messages_out.clone(),
        );
        reg.register_with_unit(
            "switchboard_ws_sent",
            "Payload bytes of data frames written (compressed when permessage-deflate applies)",
            Unit::Bytes,
            r.bytes_out.clone(),
        );
        reg.register(
            "switchboard_ws_close_frames",
            "Close frames by direction and code (received 1006: dropped without one)",
            r.closes.clone(),
        );
        reg.register(
            "switchboard_ws_rate_limited",
            "Messages over a rate limit, by action (dropped, or the connection closed)",
            r.rate_limited.clone(),
        );
        reg.register(
            "switchboard_auth_failures",
            "Requests refused by authentication middleware, by reason",
            r.auth_failures.clone(),
        );
        reg.register(
            "switchboard_sse_subscribers",
            "Open Server-Sent Events responses",
            r.sse_open.clone(),
        );
        // Series that exist from the start (at 0), so a dashboard's rate()
        // sees the first event instead of a series appearing mid-way.
        // Every outcome but "other".
        for outcome in &OUTCOMES[..OUTCOMES.len() - 1] {
            let _ = r
                .handshakes
                .get_or_create(&[("outcome", Cow::Borrowed(*outcome))]);
        }
        for action in ["dropped", "closed"] {
            let _ = r
                .rate_limited
                .get_or_create(&[("action", Cow::Borrowed(action))]);
        }
        for (direction, code) in [
            ("sent", "1000"),
            ("sent", "1001"),
            ("sent", "1008"),
            ("sent", "1011"),
            ("received", "1000"),
            ("received", "1001"),
            ("received", "1006"),
        ] {
            let _ = r.closes.get_or_create(&[
                ("direction", Cow::Borrowed(direction)),
                ("code", Cow::Borrowed(code)),
            ]);
        }
        let _ = r
            .auth_failures
            .get_or_create(&[("reason", Cow::Borrowed("missing token"))]);
        r
    }

    pub(crate) fn ws_opened(&self) {
        self.ws_open.inc();
    }

    pub(crate) fn ws_closed(&self) {
        self.ws_open.dec();
    }

    /// One upgrade request answered with `status` after `elapsed`.
    pub(crate) fn handshake(&self, status: StatusCode, elapsed: Duration) {
        // Indices in OUTCOMES.
        let outcome = match status.as_u16() {
            // 200: an HTTP/2 extended CONNECT accepted (RFC 8441).
            101 | 200 => 0,
            400 | 426 => 1,
            401 => 2,
            403 => 3,
            429 => 4,
            503 => 5,
            500..=599 => 6,
            _ => 7,
        };
        self.outcome_counters[outcome]
            .get_or_init(|| {
                self.handshakes
                    .get_or_create(&[("outcome", Cow::Borrowed(OUTCOMES[outcome]))])
                    .clone()
            })
            .inc();
        self.handshake_seconds.observe(elapsed.as_secs_f64());
    }

    /// One data message received with `payload` bytes.
    #[inline]
    pub(crate) fn received(&self, payload: usize) {
        self.messages_in.inc();
        self.bytes_in.inc_by(payload as u64);
    }

    /// One batch of frames written: counts its data frames and their
    /// payload bytes with one atomic add each.
    #[inline]
    pub(crate) fn sent_batch(&self, batch: &[switchboard_proto::Frame]) {
        let (mut messages, mut bytes) = (0u64, 0u64);
        for f in batch {
            if matches!(
                f.opcode(),
                switchboard_proto::OpCode::Text
                    | switchboard_proto::OpCode::Binary
                    | switchboard_proto::OpCode::Continuation
            ) {
                messages += u64::from(f.fin());
                bytes += f.payload().len() as u64;
            }
        }
        if messages > 0 {
            self.messages_out.inc_by(messages);
        }
        if bytes > 0 {
            self.bytes_out.inc_by(bytes);
        }
    }

    /// A close frame sent (`sent`) or received, with its code.
    pub(crate) fn close_frame(&self, sent: bool, code: CloseCode) {
        let label = code_label(code);
        self.close_counters[usize::from(!sent)][label]
            .get_or_init(|| {
                let direction = if sent { "sent" } else { "received" };
                self.closes
                    .get_or_create(&[
                        ("direction", Cow::Borrowed(direction)),
                        ("code", Cow::Borrowed(CODE_LABELS[label])),
                    ])
                    .clone()
            })
            .inc();
    }

    /// A message over the rate limit (`closed`: the connection is failed).
    pub(crate) fn rate_limited(&self, closed: bool) {
        let action = if closed { "closed" } else { "dropped" };
        self.rate_limited
            .get_or_create(&[("action", Cow::Borrowed(action))])
            .inc();
    }

    /// A request refused by authentication.
    pub(crate) fn auth_failure(&self, reason: &str) {
        // Reasons come from a fixed set of messages (see `auth`); the
        // length cap is a guard against ever labelling with input.
        let reason: String = reason.chars().take(48).collect();
        self.auth_failures
            .get_or_create(&[("reason", Cow::Owned(reason))])
            .inc();
    }

    pub(crate) fn sse_opened(&self) {
        self.sse_open.inc();
    }

    pub(crate) fn sse_closed(&self) {
        self.sse_open.dec();
    }
}

/// Reads a hub's counters at scrape time.
#[derive(Debug)]
struct HubCollector(Hub);

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let mut gauge = |name: &str, help: &str, v: i64| -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)
        };
        gauge(
            "switchboard_hub_connections",
            "Hub members (sockets and SSE subscribers).",
            s.connections as i64,
        )?;
        gauge(
            "switchboard_hub_rooms",
            "Rooms with at least one member.",
            s.rooms.len() as i64,
        )?;
        if let Some(bp) = &s.backplane {
            gauge(
                "switchboard_backplane_healthy",
                "1 when the backplane is connected and its subscriptions are live.",
                i64::from(bp.healthy),
            )?;
            gauge(
                "switchboard_backplane_subscriptions",
                "Rooms this node receives from the backplane.",
                bp.subscriptions as i64,
            )?;
        }
        let mut counter = |name: &str, help: &str, v: u64| -> Result<(), std::fmt::Error> {
            let c: ConstCounter<u64> = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)
        };
        counter(
            "switchboard_hub_broadcasts",
            "Broadcast calls (room and hub-wide).",
            s.broadcasts,
        )?;
        counter(
            "switchboard_hub_deliveries",
            "Messages queued to recipients by broadcasts.",
            s.deliveries,
        )?;
        counter(
            "switchboard_hub_slow_consumer_closes",
            "Members cut because their queue was full (sockets and SSE).",
            s.slow_consumers,
        )?;
        if s.backplane.is_some() {
            // The backplane's own count (each failure once, awaited or
            // not), which `HubStats::backplane_errors` reports.
            counter(
                "switchboard_backplane_publish_errors",
                "Backplane publishes that failed.",
                s.backplane_errors,
            )?;
        }
        Ok(())
    }
}

/// The metrics of one app: create, optionally watch a [`Hub`], and mount
/// with [`App::metrics`]. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<Recorder>,
    /// Locked only to register and to scrape.
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of instruments (all zero).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let recorder = Arc::new(Recorder::new(&mut registry));
        Metrics {
            recorder,
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Also reports `hub`'s counts, and its backplane's state when
    /// clustered, read at each scrape. One hub per `Metrics`: a second
    /// would repeat the same series names.
    pub fn hub(self, hub: &Hub) -> Metrics {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(HubCollector(hub.clone())));
        self
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    pub(crate) fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }
}

/// What [`App::readiness`] checks.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Readiness {
    hubs: Vec<Hub>,
}

impl Readiness {
    /// Ready while the server accepts connections.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Ready only while `hub`'s backplane is healthy (when it has one).
    pub fn hub(mut self, hub: &Hub) -> Readiness {
        self.hubs.push(hub.clone());
        self
    }

    fn check(&self, draining: bool) -> Response {
        match verdict(draining, self.hubs.iter().map(|h| h.stats().backplane)) {
            Ok(()) => {
                let mut res = serde_json::json!({"status": "ready"})
                    .to_string()
                    .into_response();
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                res
            }
            Err((reason, backplane)) => not_ready(&reason, backplane),
        }
    }
}

/// Ready unless draining or a backplane is unhealthy; the reason and the
/// backplane's report otherwise.
fn verdict(
    draining: bool,
    backplanes: impl Iterator<Item = Option<crate::hub::BackplaneHealth>>,
) -> Result<(), (String, Option<serde_json::Value>)> {
    if draining {
        return Err(("server is shutting down".into(), None));
    }
    for bp in backplanes.flatten() {
        if !bp.healthy {
            let detail = bp.detail.clone().unwrap_or_else(|| "unhealthy".into());
            return Err((
                format!("backplane not connected: {detail}"),
                serde_json::to_value(&bp).ok(),
            ));
        }
    }
    Ok(())
}

fn not_ready(reason: &str, backplane: Option<serde_json::Value>) -> Response {
    let mut body = serde_json::json!({"status": "not_ready", "reason": reason});
    if let Some(bp) = backplane {
        body["backplane"] = bp;
    }
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Readiness as an extractor-free handler input: whether the app drains.
struct Draining(bool);

impl crate::extract::FromRequestParts for Draining {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, crate::Rejection> {
        Ok(Draining(cx.shared.is_draining()))
    }
}

impl App {
    /// Records metrics into `metrics` and serves them at `path` (`GET`,
    /// Prometheus text format). Routes added before or after are measured
    /// alike.
    pub fn metrics(self, path: &str, metrics: Metrics) -> App {
        let served = metrics.clone();
        self.record_metrics(metrics.recorder().clone())
            .get(path, move || {
                let m = served.clone();
                async move {
                    let mut res = m.render().into_response();
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        ),
                    );
                    res
                }
            })
    }

    /// Serves a readiness probe at `path` (`GET`): 200 `{"status":"ready"}`
    /// while the server accepts connections and every hub in `checks` has a
    /// healthy backplane (or none); 503 with the reason otherwise (shutting
    /// down, backplane disconnected). Liveness stays a plain route (the
    /// demo's `GET /health`).
    pub fn readiness(self, path: &str, checks: Readiness) -> App {
        self.get(path, move |Draining(draining): Draining| {
            let checks = checks.clone();
            async move { checks.check(draining) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_in_prometheus_text_format() {
        let m = Metrics::new();
        let r = m.recorder();
        r.ws_opened();
        r.received(10);
        let frame = |t: &str| {
            switchboard_proto::Frame::new(
                switchboard_proto::OpCode::Text,
                true,
                false,
                bytes::Bytes::copy_from_slice(t.as_bytes()),
            )
        };
        r.sent_batch(&[frame("0123456789"), frame("0123456789abcdefghij")]);
        r.handshake(StatusCode::SWITCHING_PROTOCOLS, Duration::from_micros(300));
        r.close_frame(true, CloseCode::NORMAL);
        r.close_frame(false, CloseCode(4321));
        let text = m.hub(&Hub::new()).render();
        for line in [
            "switchboard_ws_connections 1",
            "switchboard_ws_messages_received_total 1",
            "switchboard_ws_received_bytes_total 10",
            "switchboard_ws_messages_sent_total 2",
            "switchboard_ws_sent_bytes_total 30",
            "switchboard_ws_handshakes_total{outcome=\"accepted\"} 1",
            "switchboard_ws_handshake_duration_seconds_count 1",
            "switchboard_ws_close_frames_total{direction=\"sent\",code=\"1000\"} 1",
            "switchboard_ws_close_frames_total{direction=\"received\",code=\"4xxx\"} 1",
            "switchboard_hub_connections 0",
            "switchboard_hub_slow_consumer_closes_total 0",
            "switchboard_sse_subscribers 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("backplane"),
            "no backplane series unclustered"
        );
    }

    #[test]
    fn readiness_follows_draining_and_backplane_health() {
        let health = |healthy| crate::hub::BackplaneHealth {
            healthy,
            detail: (!healthy).then(|| "redis: connection refused".to_owned()),
            subscriptions: 0,
            publish_errors: 0,
        };
        assert!(verdict(false, [None, Some(health(true))].into_iter()).is_ok());
        let (reason, bp) = verdict(false, [Some(health(false))].into_iter()).unwrap_err();
        assert_eq!(reason, "backplane not connected: redis: connection refused");
        assert_eq!(bp.unwrap()["healthy"], false);
        let (reason, _) = verdict(true, std::iter::empty()).unwrap_err();
        assert_eq!(reason, "server is shutting down");
    }
}
