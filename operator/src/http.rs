//! The operator's own HTTP server: `/metrics` for Prometheus and `/healthz` for probes.

use std::net::SocketAddr;

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

/// Serves `/metrics` and `/healthz` on `addr` until the future is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
