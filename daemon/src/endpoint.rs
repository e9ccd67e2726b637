//! The operations endpoint every daemon serves: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive and its loops turn) and `/readyz` (it is doing its job).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::shutdown::Shutdown;

/// Whether the daemon is ready, and if not, why: shared by the tasks that know.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<RwLock<Result<(), String>>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(RwLock::new(Err("starting".to_owned()))))
    }
}

impl Readiness {
    pub fn ready(&self) {
        self.set(Ok(()));
    }

    /// Not ready, with a reason `/readyz` shows.
    pub fn not_ready(&self, reason: impl Into<String>) {
        self.set(Err(reason.into()));
    }

    pub fn get(&self) -> Result<(), String> {
        self.0
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set(&self, value: Result<(), String>) {
        match self.0.write() {
            Ok(mut slot) => *slot = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

#[derive(Clone)]
struct Ops {
    registry: Registry,
    readiness: Readiness,
}

/// Serves the endpoint on `addr` until `shutdown`; returns the bound address at once (port 0
/// picks a free one, for tests).
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    mut shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops {
            registry,
            readiness,
        });
    tokio::spawn(async move {
        let stop = async move { shutdown.wait().await };
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%bound, "operations endpoint stopped: {err}");
        }
    });
    Ok(bound)
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&ops.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {err}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(ops): State<Ops>) -> Response {
    match ops.readiness.get() {
        Ok(()) => "ready\n".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("ferrolb_test_total", "a test counter").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let readiness = Readiness::default();
        let (trigger, shutdown) = crate::shutdown::channel();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            readiness.clone(),
            shutdown,
        )
        .await
        .unwrap();

        assert!(get(addr, "/metrics").await.contains("ferrolb_test_total 1"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let starting = get(addr, "/readyz").await;
        assert!(
            starting.starts_with("HTTP/1.1 503") && starting.contains("not ready: starting"),
            "{starting}"
        );
        readiness.ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        trigger.trigger();
    }
}
