//! OpenAI-compatible HTTP API.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with SSE streaming),
//! `GET /v1/models`, `GET /health` (alive), `GET /ready` (loaded and not draining), `GET /metrics`.
//! Start it with [`start`]; stop it with [`RunningServer::drain`].

mod detok;
mod error;
mod generation;
mod handlers;
mod loading;
mod request;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    routing::{get, post},
};
pub use detok::{Detokenizer, StopMatcher};
pub use error::ApiError;
pub use loading::{LoadingServer, serve_loading};
pub use request::{Endpoint, Input, ParsedRequest, parse};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{InfoLabels, Metrics},
    model::{ChatMessage, Forward, Tokenizer},
    scheduler::{Scheduler, SchedulerConfig, SchedulerHandle},
};

/// Text ↔ tokens, as the server needs it. Implemented by the model's [`Tokenizer`] and by test
/// doubles.
pub trait TextCodec: Send + Sync {
    /// Encodes text; `add_special` adds BOS where the model expects it.
    fn encode(&self, text: &str, add_special: bool) -> anyhow::Result<Vec<u32>>;
    /// Decodes ids (special tokens skipped).
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String>;
    /// Token ids that end generation.
    fn stop_token_ids(&self) -> &[u32];
    /// Renders the chat template with a generation prompt.
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> anyhow::Result<String>;
}

impl TextCodec for Tokenizer {
    fn encode(&self, text: &str, add_special: bool) -> anyhow::Result<Vec<u32>> {
        Tokenizer::encode(self, text, add_special)
    }
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        Tokenizer::decode(self, ids)
    }
    fn stop_token_ids(&self) -> &[u32] {
        Tokenizer::stop_token_ids(self)
    }
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        Tokenizer::apply_chat_template(self, messages)
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: IpAddr,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// The name clients pass as `model`.
    pub served_model_name: String,
    /// Labels of `bitscale_engine_info`.
    pub quantization: String,
    pub device: String,
    /// Caps the context below the model's own (`--context-length`); `None` keeps the model's.
    pub max_context: Option<usize>,
    pub scheduler: SchedulerConfig,
}

/// Shared by all handlers.
pub(crate) struct AppState {
    pub scheduler: SchedulerHandle,
    pub codec: Arc<dyn TextCodec>,
    pub metrics: Arc<Metrics>,
    pub model_name: String,
    pub context_length: usize,
    pub kv_bytes_per_token: u64,
    pub draining: AtomicBool,
    pub inflight: AtomicUsize,
    pub idle: Notify,
}

/// Counts a request in flight until dropped, so a drain can wait for it.
pub(crate) struct InflightGuard(Arc<AppState>);

impl InflightGuard {
    pub(crate) fn new(app: Arc<AppState>) -> Self {
        app.inflight.fetch_add(1, Ordering::SeqCst);
        Self(app)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A server accepting connections.
pub struct RunningServer {
    addr: SocketAddr,
    app: Arc<AppState>,
    stop_http: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    scheduler: Scheduler,
}

/// Starts the scheduler and the HTTP server over `model` and `codec`. Returns once the listener
/// is bound; `RunningServer::local_addr` tells the port when `config.port` is 0.
pub async fn start(
    model: Arc<dyn Forward>,
    codec: Arc<dyn TextCodec>,
    config: ServerConfig,
) -> anyhow::Result<RunningServer> {
    let info = model.info().clone();
    let metrics = Arc::new(Metrics::new(
        InfoLabels {
            model: config.served_model_name.clone(),
            quantization: config.quantization.clone(),
            device: config.device.clone(),
            kernels: if config.device == "cpu" {
                crate::model::kernels_label().into()
            } else {
                config.device.clone()
            },
        },
        info.weight_bytes,
    ));
    let scheduler = Scheduler::spawn(model, config.scheduler.clone(), metrics.clone())?;
    let app = Arc::new(AppState {
        scheduler: scheduler.handle(),
        codec,
        metrics,
        model_name: config.served_model_name.clone(),
        context_length: config
            .max_context
            .map_or(info.context_length, |c| c.min(info.context_length)),
        kv_bytes_per_token: info.kv_bytes_per_token,
        draining: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    let listener = tokio::net::TcpListener::bind((config.host, config.port)).await?;
    let addr = listener.local_addr()?;
    let stop_http = CancellationToken::new();
    let router = router(app.clone());
    let stop = stop_http.clone();
    let task = tokio::spawn(async move {
        axum::serve(no_delay(listener), router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    tracing::info!(%addr, model = %config.served_model_name, "serving");
    Ok(RunningServer {
        addr,
        app,
        stop_http,
        task,
        scheduler,
    })
}

fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/models", get(handlers::models))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .with_state(app)
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's metrics (for figures measured outside the request path, such as quality).
    pub fn metrics(&self) -> &Metrics {
        &self.app.metrics
    }

    /// Starts draining: `/ready` turns 503 and new generation requests get 503; requests in
    /// flight continue. Connections are still accepted so probes see the change.
    pub fn begin_drain(&self) {
        self.app.draining.store(true, Ordering::SeqCst);
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.app.inflight.load(Ordering::SeqCst)
    }

    /// Drains: waits for requests in flight to end, at most `grace`, then closes the listener and
    /// stops the scheduler (cutting off what is still running). Returns whether all finished.
    pub async fn drain(self, grace: Duration) -> anyhow::Result<bool> {
        self.begin_drain();
        let app = self.app.clone();
        let all_done = tokio::time::timeout(grace, async move {
            loop {
                let notified = app.idle.notified();
                if app.inflight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok();
        self.stop_http.cancel();
        // The scheduler stops first so streams still open end and their connections close.
        tokio::task::spawn_blocking(move || self.scheduler.stop()).await?;
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("connections still open after drain; exiting anyway"),
        }
        Ok(all_done)
    }
}

/// `listener` with `TCP_NODELAY` on every accepted connection. Streamed tokens are small writes:
/// with Nagle's algorithm one waits for the client's delayed ACK of the previous (up to 40 ms on
/// Linux), which showed as a 40 ms time to first token on a one-token prefill.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, impl FnMut(&mut tokio::net::TcpStream) + Send + 'static> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY; streamed tokens may be delayed");
        }
    })
}
