//! Internal telemetry of the gradtel daemons, in Prometheus conventions.
//!
//! Names carry the `gradtel_` prefix and base units (`_seconds`, `_bytes`), counters end in
//! `_total`; the process metrics ([`process`]) keep the standard `process_` names every
//! Prometheus client uses. Latencies are recorded in HdrHistograms (microsecond resolution, 3 significant
//! digits) and exported as a Prometheus summary: fixed quantiles over a sliding window of the
//! last 5–10 minutes (as the Prometheus Go client's summaries, whose default window is 10
//! minutes), plus `_sum` and `_count` since start. Quantiles since start would tell, after a week
//! of uptime, how the daemon did that week; a page about acks slowing down needs how it does
//! now. Everything is lock-free except histograms, which take a short mutex per record.

pub mod process;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long each of the two histograms of a [`Latency`] collects: the quantiles cover the
/// last one to two of these.
pub const LATENCY_SLICE: Duration = Duration::from_secs(300);

/// Latency distribution in microseconds, 1 µs .. 1 h, 3 significant digits: quantiles over the
/// last 5–10 minutes ([`LATENCY_SLICE`]), count and sum since start.
#[derive(Debug)]
pub struct Latency {
    window: Mutex<Window>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Two histograms, of the slice being filled and of the one before it.
#[derive(Debug)]
struct Window {
    current: hdrhistogram::Histogram<u64>,
    previous: hdrhistogram::Histogram<u64>,
    /// When `current` began.
    started: Instant,
}

impl Window {
    /// Move on to the slice `now` falls in: the previous one is dropped, the current one
    /// becomes the previous (or is dropped too, when more than a slice has passed since it
    /// ended).
    fn advance(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < LATENCY_SLICE {
            return;
        }
        if age < 2 * LATENCY_SLICE {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.started += LATENCY_SLICE;
        } else {
            self.previous.reset();
            self.started = now;
        }
        self.current.reset();
    }
}

impl Default for Latency {
    fn default() -> Self {
        let histogram = || {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid")
        };
        Self {
            window: Mutex::new(Window {
                current: histogram(),
                previous: histogram(),
                started: Instant::now(),
            }),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Latency {
    pub fn record(&self, d: Duration) {
        self.record_at(d, Instant::now());
    }

    fn record_at(&self, d: Duration, now: Instant) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut w) = self.window.lock() {
            w.advance(now);
            w.current.saturating_record(us);
        }
    }

    /// Values recorded since start.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Quantiles in seconds over the window ending at `now`; NaN for an empty window (as the
    /// Prometheus clients export them).
    fn quantiles_at<const N: usize>(&self, qs: [f64; N], now: Instant) -> [f64; N] {
        let Ok(mut w) = self.window.lock() else {
            return [f64::NAN; N];
        };
        w.advance(now);
        let mut both = w.previous.clone();
        if both.add(&w.current).is_err() || both.is_empty() {
            return [f64::NAN; N];
        }
        qs.map(|q| both.value_at_quantile(q) as f64 / 1e6)
    }

    /// A quantile in seconds over the last 5–10 minutes; NaN when nothing was recorded then.
    pub fn quantile_seconds(&self, q: f64) -> f64 {
        self.quantiles_at([q], Instant::now())[0]
    }
}

#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
        self
    }

    /// An unlabelled sample of `kind` (`counter` or `gauge`) with a fractional value.
    pub fn value(&mut self, name: &str, help: &str, kind: &str, value: f64) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
        self
    }

    pub fn latency(&mut self, name: &str, help: &str, lat: &Latency) -> &mut Self {
        self.latency_at(name, help, lat, Instant::now())
    }

    fn latency_at(&mut self, name: &str, help: &str, lat: &Latency, now: Instant) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} summary");
        let qs = [0.5, 0.9, 0.99, 0.999];
        // An empty window's NaN prints as `NaN`, the text format's spelling.
        for (q, v) in qs.iter().zip(lat.quantiles_at(qs, now)) {
            let _ = writeln!(self.out, "{name}{{quantile=\"{q}\"}} {v}");
        }
        let sum = lat.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {}", lat.count());
        self
    }

    /// A metric family with labelled samples: `kind` is `counter` or `gauge`. Label values are
    /// escaped (backslash, quote, newline) as the text format requires; non-finite values are
    /// written as `NaN`/`+Inf`/`-Inf`.
    pub fn family<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, f64)>,
    ) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let value = if value.is_nan() {
                "NaN".to_string()
            } else if value.is_infinite() {
                if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
            } else {
                value.to_string()
            };
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Something that can render its metrics.
pub trait Render: Send + Sync + 'static {
    fn render(&self) -> String;
}

/// Serve `GET /metrics` (and `GET /healthz`, answering `ok` while the process serves) on
/// `addr` until `shutdown` resolves. Returns the bound address.
pub async fn serve_metrics<R: Render>(
    addr: SocketAddr,
    metrics: Arc<R>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    serve_metrics_on(listener, metrics, shutdown);
    Ok(bound)
}

/// What [`serve_metrics_on`] serves on: a source of connections.
pub use axum::serve::Listener;

/// The same routes on connections `listener` accepts (a TLS listener, say).
pub fn serve_metrics_on<L, R>(
    listener: L,
    metrics: Arc<R>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    R: Render,
{
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_follows_prometheus_text_format() {
        let c = Counter::default();
        c.add(3);
        let l = Latency::default();
        l.record(Duration::from_millis(2));
        l.record(Duration::from_millis(4));
        let mut e = Exposition::new();
        e.counter("gradtel_x_total", "x.", c.get())
            .latency("gradtel_y_seconds", "y.", &l);
        let text = e.finish();
        assert!(text.contains("# TYPE gradtel_x_total counter\ngradtel_x_total 3\n"));
        assert!(text.contains("gradtel_y_seconds_count 2\n"));
        assert!(text.contains("gradtel_y_seconds_sum 0.006\n"));
        let p50: f64 = text
            .lines()
            .find(|l| l.starts_with("gradtel_y_seconds{quantile=\"0.5\"}"))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((p50 - 0.002).abs() < 0.00001, "{p50}");
    }

    /// p50 of a latency's exposition at `now`.
    fn p50_at(l: &Latency, now: Instant) -> f64 {
        let mut e = Exposition::new();
        e.latency_at("gradtel_y_seconds", "y.", l, now);
        let text = e.finish();
        text.lines()
            .find_map(|l| l.strip_prefix("gradtel_y_seconds{quantile=\"0.5\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    #[test]
    fn quantiles_cover_the_last_five_to_ten_minutes_and_counts_everything() {
        let l = Latency::default();
        let t0 = Instant::now();
        let min = |m: u64| t0 + Duration::from_secs(60 * m);
        for _ in 0..1000 {
            l.record_at(Duration::from_millis(1), t0);
        }
        for _ in 0..10 {
            l.record_at(Duration::from_millis(100), min(6));
        }
        // Both slices in the window: the old values still set the median.
        assert!((p50_at(&l, min(7)) - 0.001).abs() < 1e-5);
        // Ten minutes on, the first slice has left the window.
        assert!(
            (p50_at(&l, min(11)) - 0.1).abs() < 1e-3,
            "{}",
            p50_at(&l, min(11))
        );
        // Nothing recorded in the last ten minutes: NaN, as Prometheus clients export it.
        assert!(p50_at(&l, min(40)).is_nan());
        // A late record after a long pause starts a fresh window.
        l.record_at(Duration::from_millis(7), min(41));
        assert!((p50_at(&l, min(42)) - 0.007).abs() < 1e-4);
        // Count and sum cover everything since start.
        let mut e = Exposition::new();
        e.latency_at("gradtel_y_seconds", "y.", &l, min(42));
        let text = e.finish();
        assert!(text.contains("gradtel_y_seconds_count 1011\n"), "{text}");
        assert!(text.contains("gradtel_y_seconds_sum 2.007\n"), "{text}");
    }

    #[test]
    fn labelled_families_escape_label_values() {
        let mut e = Exposition::new();
        e.family(
            "gradtel_run_x",
            "x.",
            "gauge",
            [
                (vec![("run", "a\"b"), ("scope", "model")], 1.5),
                (vec![("run", "c")], f64::NAN),
            ],
        );
        let text = e.finish();
        assert!(
            text.contains("gradtel_run_x{run=\"a\\\"b\",scope=\"model\"} 1.5\n"),
            "{text}"
        );
        assert!(text.contains("gradtel_run_x{run=\"c\"} NaN\n"));
    }
}
