//! The scheduler thread: admission into the batch, step building, sampling, finishing.

use std::{
    sync::{Arc, MutexGuard},
    time::{Duration, Instant},
};

use super::{
    Event, FinishReason, GenerationRequest, Queue, Sampler, Shared, admission::reservation,
    prefix::PrefixCache, step_budget::StepBudget,
};
use crate::{
    metrics::Metrics,
    model::{Forward, KvCache, SeqChunk},
};

/// How long an idle scheduler sleeps before re-checking for a stop without a wake-up.
const IDLE_POLL: Duration = Duration::from_millis(500);

struct Sequence {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    max_tokens: usize,
    stop_token_ids: Vec<u32>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    sampler: Sampler,
    cache: KvCache,
    reserved: u64,
    arrived: Instant,
    last_token_at: Option<Instant>,
    done: bool,
    /// Finished normally (its cache is whole and may be kept for prefix reuse).
    finished: bool,
}

impl Sequence {
    fn is_decoding(&self) -> bool {
        self.prefilled == self.prompt.len()
    }
}

pub(super) struct Engine {
    model: Arc<dyn Forward>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    running: Vec<Sequence>,
    kv_reserved: u64,
    prefix: PrefixCache,
    budget: StepBudget,
}

impl Engine {
    pub(super) fn new(model: Arc<dyn Forward>, shared: Arc<Shared>, metrics: Arc<Metrics>) -> Self {
        let prefix = PrefixCache::new(shared.config.prefix_cache_entries);
        let budget = StepBudget::new(shared.config.itl_target, shared.config.max_batch_tokens);
        metrics.step_token_budget.set(budget.tokens() as i64);
        Self {
            model,
            shared,
            metrics,
            running: Vec::new(),
            kv_reserved: 0,
            prefix,
            budget,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let shared = self.shared.clone();
            let mut q = lock(&shared);
            loop {
                if q.stop {
                    return;
                }
                if !self.running.is_empty() || !q.waiting.is_empty() {
                    break;
                }
                q = match shared.wake.wait_timeout(q, IDLE_POLL) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
            self.admit(&mut q);
            self.shared
                .running
                .store(self.running.len(), std::sync::atomic::Ordering::SeqCst);
            drop(q);
            self.drop_cancelled();
            if !self.running.is_empty() {
                self.step();
            }
            self.update_gauges();
        }
    }

    /// Moves waiting requests into the batch, first come first served; a request that does not
    /// fit in the KV pool now blocks those behind it, so large requests are not starved.
    fn admit(&mut self, q: &mut Queue) {
        let before = q.waiting.len();
        q.waiting.retain(|r| !r.events.is_closed());
        if q.waiting.len() != before {
            q.waiting_tokens = q.waiting.iter().map(|r| r.prompt.len()).sum();
        }
        let shared = self.shared.clone();
        let cfg = &shared.config;
        while self.running.len() < cfg.max_running {
            let Some(front) = q.waiting.front() else { break };
            let need = reservation(
                front.prompt.len(),
                front.max_tokens,
                self.shared.kv_bytes_per_token,
            );
            // Kept prefixes give their room back, oldest first, before a request waits.
            let fits = |e: &Self| e.kv_reserved + e.prefix.bytes() + need <= cfg.kv_pool_bytes;
            while !fits(self) && self.prefix.evict_oldest() {}
            if !fits(self) {
                break;
            }
            let Some(req) = q.waiting.pop_front() else { break };
            q.waiting_tokens = q.waiting_tokens.saturating_sub(req.prompt.len());
            self.kv_reserved += need;
            self.start(req, need);
        }
        self.metrics.num_requests_waiting.set(q.waiting.len() as i64);
    }

    fn start(&mut self, req: GenerationRequest, reserved: u64) {
        let GenerationRequest {
            prompt,
            max_tokens,
            sampling,
            stop_token_ids,
            events,
            arrived,
        } = req;
        self.metrics
            .request_queue_time_seconds
            .observe(arrived.elapsed().as_secs_f64());
        self.metrics.prefix_cache_queries.inc_by(prompt.len() as u64);
        let reused = self
            .prefix
            .lookup(&prompt)
            .and_then(|(cache, len)| Some((self.model.fork_cache(cache, len)?, len)));
        let (mut cache, prefilled) = match reused {
            Some((cache, len)) => {
                self.metrics.prefix_cache_hits.inc_by(len as u64);
                (cache, len)
            }
            None => (self.model.new_cache(), 0),
        };
        self.model
            .reserve_cache(&mut cache, prompt.len() + max_tokens.max(1));
        self.running.push(Sequence {
            prompt,
            generated: Vec::new(),
            prefilled,
            max_tokens: max_tokens.max(1),
            stop_token_ids,
            events,
            sampler: Sampler::new(sampling),
            cache,
            reserved,
            arrived,
            last_token_at: None,
            done: false,
            finished: false,
        });
    }

    fn drop_cancelled(&mut self) {
        for s in &mut self.running {
            if s.events.is_closed() {
                s.done = true;
                self.metrics
                    .e2e_request_latency_seconds
                    .observe(s.arrived.elapsed().as_secs_f64());
            }
        }
        self.remove_done();
    }

    fn remove_done(&mut self) {
        let per_token = self.shared.kv_bytes_per_token;
        let done: Vec<Sequence> = self.running.extract_if(.., |s| s.done).collect();
        for s in done {
            self.kv_reserved = self.kv_reserved.saturating_sub(s.reserved);
            if !s.finished {
                continue;
            }
            // Its cache holds the prompt and all generated tokens but the last; the count never
            // exceeds the reservation it had, so the pool stays within bounds, and spare capacity
            // is released so the count is what the cache holds.
            let mut tokens = s.prompt;
            tokens.extend_from_slice(&s.generated);
            let mut cache = s.cache;
            self.model.compact_cache(&mut cache);
            let bytes = cache.len() as u64 * per_token;
            self.prefix.insert(tokens, cache, bytes);
        }
    }

    /// Token ranges per running sequence for this step: decodes first, then prompt chunks.
    fn plan(&self) -> Vec<Option<(usize, usize)>> {
        let budget = self.budget.tokens();
        self.metrics.step_token_budget.set(budget as i64);
        let decodes = self.running.iter().filter(|s| s.is_decoding()).count();
        // Prefill always gets some share, so a full batch of decodes cannot starve new prompts.
        let mut left = budget.saturating_sub(decodes).max(budget / 8).max(1);
        self.running
            .iter()
            .map(|s| {
                if s.is_decoding() {
                    let g = s.generated.len();
                    return (g > 0).then(|| (g - 1, g));
                }
                let n = (s.prompt.len() - s.prefilled).min(left);
                if n == 0 {
                    return None;
                }
                left -= n;
                Some((s.prefilled, s.prefilled + n))
            })
            .collect()
    }

    fn step(&mut self) {
        let plan = self.plan();
        let mut owners = Vec::with_capacity(plan.len());
        let mut chunks = Vec::with_capacity(plan.len());
        let mut step_tokens = 0;
        for (i, (s, p)) in self.running.iter_mut().zip(&plan).enumerate() {
            let Some((a, b)) = *p else { continue };
            let decoding = s.is_decoding();
            let Sequence {
                prompt,
                generated,
                cache,
                ..
            } = s;
            let tokens = if decoding { &generated[a..b] } else { &prompt[a..b] };
            step_tokens += tokens.len();
            chunks.push(SeqChunk {
                tokens,
                cache,
                want_logits: decoding || b == prompt.len(),
            });
            owners.push((i, b - a));
        }
        let batch = chunks.len();
        let started = Instant::now();
        let result = self.model.forward(&mut chunks);
        let elapsed = started.elapsed().as_secs_f64();
        self.budget.observe(step_tokens, elapsed);
        drop(chunks);
        self.metrics.iteration_tokens.observe(step_tokens as f64);
        self.metrics.iteration_duration_seconds.observe(elapsed);
        self.metrics.iteration_batch_size.observe(batch as f64);
        let logits = match result {
            Ok(l) if l.len() == owners.len() => l,
            Ok(l) => {
                let msg = format!(
                    "model returned {} results for {} sequences",
                    l.len(),
                    owners.len()
                );
                return self.fail(&owners, &msg);
            }
            Err(e) => return self.fail(&owners, &format!("model forward failed: {e:#}")),
        };
        let now = Instant::now();
        for ((i, n), logits) in owners.into_iter().zip(logits) {
            let s = &mut self.running[i];
            let decoding = s.is_decoding();
            if !decoding {
                s.prefilled += n;
                if !s.is_decoding() {
                    continue;
                }
                self.metrics.prompt_tokens.inc_by(s.prompt.len() as u64);
            }
            let Some(logits) = logits else {
                s.done = true;
                let _ = s.events.send(Event::Failed("model returned no logits".into()));
                continue;
            };
            let token = s.sampler.sample(&logits);
            match s.last_token_at {
                None => self
                    .metrics
                    .time_to_first_token_seconds
                    .observe((now - s.arrived).as_secs_f64()),
                Some(t) => self
                    .metrics
                    .inter_token_latency_seconds
                    .observe((now - t).as_secs_f64()),
            }
            s.last_token_at = Some(now);
            let finish = if s.stop_token_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else {
                // Counted as usage counts it: a stop token ends the completion, it is not part of it.
                self.metrics.generation_tokens.inc();
                s.generated.push(token);
                let _ = s.events.send(Event::Token(token));
                let full = s.prompt.len() + s.generated.len() >= self.shared.context_length;
                (s.generated.len() >= s.max_tokens || full).then_some(FinishReason::Length)
            };
            if let Some(reason) = finish {
                s.done = true;
                s.finished = true;
                let _ = s.events.send(Event::Finished {
                    reason,
                    prompt_tokens: s.prompt.len(),
                    completion_tokens: s.generated.len(),
                });
                self.metrics
                    .e2e_request_latency_seconds
                    .observe((now - s.arrived).as_secs_f64());
            }
        }
        self.remove_done();
    }

    fn fail(&mut self, owners: &[(usize, usize)], msg: &str) {
        tracing::error!(error = msg, "engine step failed; failing its sequences");
        for &(i, _) in owners {
            let s = &mut self.running[i];
            s.done = true;
            let _ = s.events.send(Event::Failed(msg.to_string()));
        }
        self.remove_done();
    }

    fn update_gauges(&self) {
        self.shared
            .running
            .store(self.running.len(), std::sync::atomic::Ordering::SeqCst);
        self.metrics.num_requests_running.set(self.running.len() as i64);
        let pool = self.shared.config.kv_pool_bytes.max(1) as f64;
        self.metrics
            .kv_cache_usage_perc
            .set(self.kv_reserved as f64 / pool);
        self.metrics.prefix_cache_bytes.set(self.prefix.bytes() as i64);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    match shared.state.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
