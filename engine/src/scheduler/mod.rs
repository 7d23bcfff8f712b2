//! In-flight batching scheduler.
//!
//! A dedicated OS thread runs engine steps, because a forward pass is blocking CPU work that must
//! never run on the async runtime. Each step:
//!
//! 1. drops sequences whose client went away (their event receiver was dropped);
//! 2. admits waiting requests into the running batch, first come first served, while the batch has
//!    room (`max_running`) and the KV pool can hold the request's reservation;
//! 3. gives every decoding sequence one token, then fills the rest of the token budget
//!    (`max_batch_tokens`, or fewer to end the step within `itl_target`) with prompt chunks of
//!    prefilling sequences (chunked prefill), so a new request joins a running batch instead of
//!    waiting for it to end;
//! 4. runs one [`Forward::forward`] over the ragged batch, samples, and streams [`Event`]s back.
//!
//! Admission is bounded: [`SchedulerHandle::submit`] answers at once with an [`AdmissionError`]
//! when the waiting queue is full (count or prompt tokens), or when the request could never fit.

mod admission;
mod engine;
mod prefix;
mod sampling;
mod step_budget;
#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

pub use admission::AdmissionError;
pub use sampling::{Sampler, SamplingParams};
use tokio::sync::mpsc;

use crate::{metrics::Metrics, model::Forward};

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Sequences in the running batch at most.
    pub max_running: usize,
    /// Requests waiting for a place in the batch at most; more are rejected.
    pub max_waiting: usize,
    /// Prompt tokens of all waiting requests at most; more are rejected.
    pub max_waiting_tokens: usize,
    /// Tokens per engine step (decode tokens plus prompt chunks).
    pub max_batch_tokens: usize,
    /// Inter-token latency to keep steps within: a step then carries only as many tokens as the
    /// measured time per token of recent steps allows (at most `max_batch_tokens`).
    pub itl_target: Option<Duration>,
    /// Bytes of the KV pool; each running request reserves `(prompt + max_tokens) × kv_bytes_per_token`.
    pub kv_pool_bytes: u64,
    /// Finished sequences whose KV caches are kept for reuse by prompts with the same prefix
    /// (0: off). They use the pool's free room and give it back, oldest first, when needed.
    pub prefix_cache_entries: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running: 16,
            max_waiting: 64,
            max_waiting_tokens: 64 * 1024,
            max_batch_tokens: 512,
            itl_target: None,
            kv_pool_bytes: 1 << 30,
            prefix_cache_entries: 16,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was sampled (or, at the text layer, a stop string matched).
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the scheduler streams back for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token.
    Token(u32),
    /// Generation ended; no more events follow.
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The model failed; no more events follow.
    Failed(String),
}

/// A request for generation, carrying its own response channel.
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (at least 1).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end generation (not sent as [`Event::Token`]).
    pub stop_token_ids: Vec<u32>,
    /// Where events go. Dropping the receiver cancels the request within one step.
    pub events: mpsc::UnboundedSender<Event>,
    /// When the request arrived (for queue time and TTFT).
    pub arrived: Instant,
}

/// State shared by the handle and the scheduler thread.
struct Shared {
    state: Mutex<Queue>,
    wake: Condvar,
    config: SchedulerConfig,
    kv_bytes_per_token: u64,
    context_length: usize,
    /// Sequences in the batch, as of the last step (read by admission).
    running: std::sync::atomic::AtomicUsize,
}

struct Queue {
    waiting: std::collections::VecDeque<GenerationRequest>,
    waiting_tokens: usize,
    stop: bool,
}

/// The way into a running scheduler; cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

/// Owns the scheduler thread; [`Scheduler::stop`] ends it.
pub struct Scheduler {
    handle: SchedulerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the scheduler thread over `model`.
    pub fn spawn(
        model: Arc<dyn Forward>,
        config: SchedulerConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let info = model.info();
        let shared = Arc::new(Shared {
            state: Mutex::new(Queue {
                waiting: Default::default(),
                waiting_tokens: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            kv_bytes_per_token: info.kv_bytes_per_token,
            context_length: info.context_length,
            running: Default::default(),
            config,
        });
        metrics
            .num_requests_capacity
            .set(shared.config.max_running as i64);
        metrics.kv_pool_bytes.set(shared.config.kv_pool_bytes as i64);
        let handle = SchedulerHandle {
            shared: shared.clone(),
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("bitscale-scheduler".into())
            .spawn(move || engine::Engine::new(model, shared, metrics).run())?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }

    /// A handle to submit requests.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Stops the thread after its current step; sequences still running are dropped.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Ok(mut q) = self.handle.shared.state.lock() {
            q.stop = true;
        }
        self.handle.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl SchedulerHandle {
    /// Queues a request, or rejects it at once (never blocks).
    pub fn submit(&self, req: GenerationRequest) -> Result<(), AdmissionError> {
        let result = self.try_submit(req);
        if let Err(e) = &result {
            self.metrics.record_rejection(e.reason());
        }
        result
    }

    fn try_submit(&self, req: GenerationRequest) -> Result<(), AdmissionError> {
        let s = &self.shared;
        admission::check_fits(
            req.prompt.len(),
            req.max_tokens,
            s.context_length,
            s.kv_bytes_per_token,
            s.config.kv_pool_bytes,
        )?;
        let mut q = s.state.lock().map_err(|_| AdmissionError::Stopped)?;
        if q.stop {
            return Err(AdmissionError::Stopped);
        }
        // Free places in the batch count as waiting room too: a request that will start at the
        // next step is not queued behind anything.
        let free = s
            .config
            .max_running
            .saturating_sub(s.running.load(std::sync::atomic::Ordering::SeqCst));
        if q.waiting.len() >= s.config.max_waiting + free {
            return Err(AdmissionError::QueueFull {
                max_waiting: s.config.max_waiting,
            });
        }
        if q.waiting_tokens + req.prompt.len() > s.config.max_waiting_tokens {
            return Err(AdmissionError::QueueTokensFull {
                max_waiting_tokens: s.config.max_waiting_tokens,
            });
        }
        q.waiting_tokens += req.prompt.len();
        q.waiting.push_back(req);
        self.metrics.num_requests_waiting.set(q.waiting.len() as i64);
        drop(q);
        s.wake.notify_one();
        Ok(())
    }

    /// Maximum positions of a sequence (prompt + generated).
    pub fn context_length(&self) -> usize {
        self.shared.context_length
    }

    /// The scheduler's limits.
    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.config
    }

    /// A suggested `Retry-After` for rejected requests.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(1)
    }
}
