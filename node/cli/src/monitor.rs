//! The `--metrics` listener of `agentd start`: the node's Prometheus
//! metrics and the probes a supervisor asks (Kubernetes' liveness and
//! readiness probes, a load balancer's health check).
//!
//! ```text
//! GET /livez    200 while the process serves this listener, from before the
//!               node's bootstrap (a join may wait for its seed) to its exit
//! GET /readyz   200 once the node is up and ready (agentd_node::health: not
//!               failed, a member, every hosted group knows a leader);
//!               503 with the reasons before then, and from shutdown on
//! GET /health   200 OK, as the Prometheus exporter's own listener answered
//! GET /metrics  the metrics in Prometheus' text format (and so does every
//!               other path, as the exporter's listener did)
//! ```
//!
//! The program installs the recorder; the node library never does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentd_node::NodeHandle;
use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// How often histograms are folded and idle series expired (the exporter's
/// own listener did this every 5 s as well).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What the probes answer from; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<MonitorInner>,
}

struct MonitorInner {
    metrics: PrometheusHandle,
    /// Set once the node has started (its bootstrap done).
    node: OnceLock<NodeHandle>,
    stopping: AtomicBool,
}

impl Monitor {
    /// Installs the Prometheus recorder for this process and serves the
    /// listener at `addr` until the process exits.
    pub async fn start(addr: SocketAddr) -> Result<Monitor> {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let monitor = Monitor {
            inner: Arc::new(MonitorInner { metrics, node: OnceLock::new(), stopping: AtomicBool::new(false) }),
        };
        let app = Router::new()
            .route("/livez", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/health", get(|| async { "OK" }))
            .fallback(render_metrics)
            .with_state(monitor.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("agentd: the metrics listener stopped: {error}");
            }
        });
        let upkeep = monitor.inner.metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP_INTERVAL).await;
                upkeep.run_upkeep();
            }
        });
        Ok(monitor)
    }

    /// The node is up: readiness is its own from now on.
    pub fn node_started(&self, node: NodeHandle) {
        // A second call would be a bug of the caller; the first node stays.
        let _ = self.inner.node.set(node);
    }

    /// The process is shutting down: it is not ready for new work any more.
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }
}

async fn readyz(axum::extract::State(monitor): axum::extract::State<Monitor>) -> Response {
    if monitor.inner.stopping.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n").into_response();
    }
    let Some(node) = monitor.inner.node.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting (bootstrap not done)\n").into_response();
    };
    let readiness = node.readiness();
    if readiness.is_ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let reasons: String = readiness.problems.iter().map(|problem| format!("not ready: {problem}\n")).collect();
    (StatusCode::SERVICE_UNAVAILABLE, reasons).into_response()
}

async fn render_metrics(axum::extract::State(monitor): axum::extract::State<Monitor>) -> Response {
    let text = monitor.inner.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
