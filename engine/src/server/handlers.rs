//! Route handlers and OpenAI response shapes.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    extract::rejection::BytesRejection,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response, sse},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    AppState, InflightGuard,
    error::ApiError,
    generation::{Delta, Generation},
    request::{Endpoint, Input, ParsedRequest, parse},
};
use crate::scheduler::{AdmissionError, GenerationRequest, SamplingParams};

/// Default `max_tokens` of `/v1/completions`, as in OpenAI's API.
const DEFAULT_COMPLETION_TOKENS: usize = 16;

pub(super) async fn completions(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, body, Endpoint::Completions)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn chat_completions(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, body, Endpoint::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn models(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_name,
            "object": "model",
            "created": now_secs(),
            "owned_by": "bitscale",
            "max_model_len": app.context_length,
        }]
    }))
}

pub(super) async fn health() -> &'static str {
    "ok"
}

pub(super) async fn ready(State(app): State<Arc<AppState>>) -> Response {
    if app.draining.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ready"})).into_response()
    }
}

pub(super) async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(endpoint: Endpoint) -> String {
    let n: u64 = rand::random();
    match endpoint {
        Endpoint::Completions => format!("cmpl-{n:016x}"),
        Endpoint::Chat => format!("chatcmpl-{n:016x}"),
    }
}

async fn generate(
    app: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body.map_err(|rejection| ApiError::from_body_rejection(&rejection))?;
    if app.draining.load(Ordering::SeqCst) {
        app.metrics.record_rejection("draining");
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let req = parse(&body, endpoint)?;
    if let Some(m) = &req.model
        && *m != app.model_name
    {
        return Err(ApiError::invalid(
            "model",
            format!(
                "the model `{m}` does not exist; this server serves `{}`",
                app.model_name
            ),
        )
        .with_code("model_not_found"));
    }
    let prompt = tokenize(&app, &req, endpoint).await?;
    let max_tokens = max_tokens(&app, &req, endpoint, prompt.len())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let inflight = InflightGuard::new(app.clone());
    let prompt_tokens = prompt.len();
    let stop_token_ids = if req.ignore_eos {
        Vec::new()
    } else {
        app.codec.stop_token_ids().to_vec()
    };
    app.scheduler
        .submit(GenerationRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: req.temperature,
                top_p: req.top_p,
                top_k: req.top_k,
                seed: req.seed,
            },
            stop_token_ids,
            events: tx,
            arrived,
        })
        .map_err(|e| admission_error(&app, e))?;
    let generation = Generation::new(app.clone(), rx, req.stop.clone(), prompt_tokens, inflight);
    let shape = Shape {
        endpoint,
        id: request_id(endpoint),
        created: now_secs(),
        model: app.model_name.clone(),
    };
    if req.stream {
        Ok(stream(generation, shape, req.include_usage))
    } else {
        collect(generation, shape).await
    }
}

async fn tokenize(
    app: &Arc<AppState>,
    req: &ParsedRequest,
    endpoint: Endpoint,
) -> Result<Vec<u32>, ApiError> {
    let (text, param) = match &req.input {
        Input::Prompt(p) => (p.clone(), "prompt"),
        Input::Messages(m) => (
            app.codec.apply_chat_template(m).map_err(|e| {
                ApiError::invalid("messages", format!("cannot apply the chat template: {e:#}"))
            })?,
            "messages",
        ),
    };
    // Chat templates carry their own BOS, as with Hugging Face's `apply_chat_template`.
    let add_special = endpoint == Endpoint::Completions;
    let codec = app.codec.clone();
    let ids = tokio::task::spawn_blocking(move || codec.encode(&text, add_special))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
        .map_err(|e| ApiError::invalid(param, format!("cannot tokenize the {param}: {e:#}")))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(param, format!("the {param} has no tokens")));
    }
    if ids.len() >= app.context_length {
        return Err(ApiError::invalid(
            param,
            format!(
                "the {param} has {} tokens; the model's context length is {} tokens",
                ids.len(),
                app.context_length
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(ids)
}

fn max_tokens(
    app: &AppState,
    req: &ParsedRequest,
    endpoint: Endpoint,
    prompt: usize,
) -> Result<usize, ApiError> {
    let room = app.context_length - prompt;
    match req.max_tokens {
        Some(n) if n > room => Err(ApiError::invalid(
            "max_tokens",
            format!(
                "max_tokens ({n}) plus the prompt ({prompt} tokens) exceeds the model's context length of {} tokens",
                app.context_length
            ),
        )
        .with_code("context_length_exceeded")),
        Some(n) => Ok(n),
        None if endpoint == Endpoint::Completions => Ok(DEFAULT_COMPLETION_TOKENS.min(room)),
        None => {
            // Fill the context, but never ask for more KV than the pool holds.
            let pool_tokens = (app.scheduler.config().kv_pool_bytes / app.kv_bytes_per_token.max(1)) as usize;
            Ok(room.min(pool_tokens.saturating_sub(prompt)).max(1))
        }
    }
}

fn admission_error(app: &AppState, e: AdmissionError) -> ApiError {
    let msg = e.to_string();
    match e {
        AdmissionError::QueueFull { .. } | AdmissionError::QueueTokensFull { .. } => {
            ApiError::overloaded(msg, app.scheduler.retry_after().as_secs().max(1))
        }
        AdmissionError::ContextTooLong { .. } | AdmissionError::NeverFits { .. } => {
            ApiError::invalid("max_tokens", msg)
        }
        AdmissionError::EmptyPrompt => ApiError::invalid("prompt", msg),
        AdmissionError::Stopped => ApiError::unavailable(msg),
    }
}

/// What the response chunks look like.
struct Shape {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
}

impl Shape {
    fn usage(prompt: usize, completion: usize) -> Value {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn full(&self, text: String, reason: &str, usage: Value) -> Value {
        match self.endpoint {
            Endpoint::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": reason}],
                "usage": usage,
            }),
            Endpoint::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": reason,
                }],
                "usage": usage,
            }),
        }
    }

    /// A streamed chunk. `role` marks the first chat chunk.
    fn chunk(&self, text: Option<&str>, reason: Option<&str>, role: bool, usage_field: bool) -> Value {
        let mut v = match self.endpoint {
            Endpoint::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason}],
            }),
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}],
                })
            }
        };
        if usage_field {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, prompt: usize, completion: usize) -> Value {
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [], "usage": Self::usage(prompt, completion),
        })
    }
}

async fn collect(mut g: Generation, shape: Shape) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(d) = g.next().await {
        match d {
            Delta::Text(t) => text.push_str(&t),
            Delta::End { text: t, reason } => {
                text.push_str(&t);
                let usage = Shape::usage(g.prompt_tokens, g.completion_tokens);
                return Ok(Json(shape.full(text, reason.as_str(), usage)).into_response());
            }
            Delta::Failed(msg) => return Err(ApiError::internal(msg)),
        }
    }
    Err(ApiError::internal("generation ended without a result"))
}

/// State of an SSE stream.
struct Streaming {
    g: Generation,
    shape: Shape,
    include_usage: bool,
    /// Frames ready to send, in order.
    out: std::collections::VecDeque<String>,
    done: bool,
}

fn stream(g: Generation, shape: Shape, include_usage: bool) -> Response {
    let mut out = std::collections::VecDeque::new();
    if shape.endpoint == Endpoint::Chat {
        out.push_back(shape.chunk(Some(""), None, true, include_usage).to_string());
    }
    let st = Streaming {
        g,
        shape,
        include_usage,
        out,
        done: false,
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(frame) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(sse::Event::default().data(frame)), st));
            }
            if st.done {
                return None;
            }
            let u = st.include_usage;
            match st.g.next().await {
                Some(Delta::Text(t)) => st
                    .out
                    .push_back(st.shape.chunk(Some(&t), None, false, u).to_string()),
                Some(Delta::End { text, reason }) => {
                    if !text.is_empty() {
                        st.out
                            .push_back(st.shape.chunk(Some(&text), None, false, u).to_string());
                    }
                    let last = match st.shape.endpoint {
                        Endpoint::Completions => st.shape.chunk(Some(""), Some(reason.as_str()), false, u),
                        Endpoint::Chat => st.shape.chunk(None, Some(reason.as_str()), false, u),
                    };
                    st.out.push_back(last.to_string());
                    if u {
                        st.out.push_back(
                            st.shape
                                .usage_chunk(st.g.prompt_tokens, st.g.completion_tokens)
                                .to_string(),
                        );
                    }
                    st.out.push_back("[DONE]".into());
                    st.done = true;
                }
                Some(Delta::Failed(msg)) => {
                    st.out.push_back(ApiError::internal(msg).body().to_string());
                    st.out.push_back("[DONE]".into());
                    st.done = true;
                }
                None => {
                    st.out.push_back("[DONE]".into());
                    st.done = true;
                }
            }
        }
    });
    sse::Sse::new(s).into_response()
}
