//! The placeholder served while the model loads: `/health` is 200 (alive), `/ready` and everything
//! else 503, so a slow load does not look like a dead process to Kubernetes.

use std::net::{IpAddr, SocketAddr};

use axum::{Json, Router, http::StatusCode, routing::get};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ApiError;

/// A running placeholder; [`LoadingServer::stop`] frees the port for the real server.
pub struct LoadingServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `host:port` and answers probes until stopped.
pub async fn serve_loading(host: IpAddr, port: u16) -> anyhow::Result<LoadingServer> {
    let listener = tokio::net::TcpListener::bind((host, port)).await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/ready",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"status": "loading"})),
                )
            }),
        )
        .fallback(|| async {
            let mut e = ApiError::unavailable("the model is still loading");
            e.code = Some("loading");
            e
        });
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });
    Ok(LoadingServer { addr, stop, task })
}

impl LoadingServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering and releases the port.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
