//! Counters and gauges for operators, exported in Prometheus format when `--metrics` is given.
//!
//! Handles are registered once, so the request path pays an atomic add, not a registry lookup.
//! Without an installed recorder every handle is a no-op.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::kv::{KvService, Method};

/// Request counters and latency histograms per kv method.
pub struct RequestMetrics {
    ok: [Counter; 7],
    failed: [Counter; 7],
    latency: [Histogram; 7],
}

impl RequestMetrics {
    pub fn new() -> RequestMetrics {
        let each = |f: &dyn Fn(&'static str) -> Counter| Method::ALL.map(|m| f(m.name()));
        RequestMetrics {
            ok: each(&|m| counter!("rrkv_requests_total", "method" => m, "outcome" => "ok")),
            failed: each(&|m| counter!("rrkv_requests_total", "method" => m, "outcome" => "error")),
            latency: Method::ALL
                .map(|m| histogram!("rrkv_request_duration_seconds", "method" => m.name())),
        }
    }

    /// Records one finished call.
    pub fn record(&self, method: Method, ok: bool, elapsed: Duration) {
        let i = method as usize;
        if ok { &self.ok[i] } else { &self.failed[i] }.increment(1);
        self.latency[i].record(elapsed.as_secs_f64());
    }
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics::new()
    }
}

/// Connection counters.
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub accepted: Counter,
    pub frame_errors: Counter,
}

impl ConnectionMetrics {
    pub fn new() -> ConnectionMetrics {
        ConnectionMetrics {
            open: gauge!("rrkv_connections_open"),
            accepted: counter!("rrkv_connections_total"),
            frame_errors: counter!("rrkv_frame_errors_total"),
        }
    }
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        ConnectionMetrics::new()
    }
}

/// Installs the Prometheus exporter on `address` (served at any path, e.g. `/metrics`).
pub fn install_prometheus(address: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets(&[
            0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0,
        ])?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))
}

/// Publishes per-storage gauges (keys, index entries, data bytes) every few seconds.
pub fn spawn_storage_gauges(kv: Arc<crate::rpc::Dispatcher>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            publish(kv.kv());
        }
    })
}

fn publish(kv: &KvService) {
    for name in kv.storage_names() {
        let Some(stats) = kv.storage(name).and_then(|s| s.stats()) else {
            continue;
        };
        let storage = name.to_string();
        gauge!("rrkv_storage_keys", "storage" => storage.clone()).set(stats.keys as f64);
        gauge!("rrkv_storage_index_entries", "storage" => storage.clone())
            .set(stats.index_entries as f64);
        gauge!("rrkv_storage_data_bytes", "storage" => storage).set(stats.data_bytes as f64);
    }
}
