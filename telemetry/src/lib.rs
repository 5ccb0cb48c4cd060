//! Internal telemetry of the gradtel daemons, in Prometheus conventions.
//!
//! Names carry the `gradtel_` prefix and base units (`_seconds`, `_bytes`), counters end in
//! `_total`. Latencies are recorded in an HdrHistogram (microsecond resolution, 3 significant
//! digits) and exported as a Prometheus summary with fixed quantiles plus `_sum` and `_count`.
//! Everything is lock-free except histograms, which take a short mutex per record.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Latency distribution in microseconds, 1 µs .. 1 h, 3 significant digits.
#[derive(Debug)]
pub struct Latency {
    hist: Mutex<hdrhistogram::Histogram<u64>>,
    sum_micros: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            hist: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("static histogram bounds are valid"),
            ),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Latency {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
        if let Ok(mut h) = self.hist.lock() {
            h.saturating_record(us);
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Quantile in seconds.
    pub fn quantile_seconds(&self, q: f64) -> f64 {
        self.hist
            .lock()
            .map(|h| h.value_at_quantile(q) as f64 / 1e6)
            .unwrap_or(0.0)
    }
}

/// Builds Prometheus text exposition (format 0.0.4).
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

    pub fn latency(&mut self, name: &str, help: &str, lat: &Latency) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} summary");
        if let Ok(h) = lat.hist.lock() {
            for q in [0.5, 0.9, 0.99, 0.999] {
                let v = h.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(self.out, "{name}{{quantile=\"{q}\"}} {v}");
            }
            let sum = lat.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {}", h.len());
        }
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
