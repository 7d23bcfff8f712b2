//! One request's generation as text deltas: scheduler events → detokenizer → stop strings.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{AppState, Detokenizer, InflightGuard, StopMatcher};
use crate::scheduler::{Event, FinishReason};

/// A piece of a generation.
#[derive(Debug, PartialEq)]
pub enum Delta {
    Text(String),
    /// The end, with the last text (maybe empty).
    End {
        text: String,
        reason: FinishReason,
    },
    Failed(String),
}

/// Streams one request's text. Dropping it cancels the request (the scheduler sees the closed
/// channel) and counts it as `abort` unless it ended.
pub struct Generation {
    app: Arc<AppState>,
    rx: mpsc::UnboundedReceiver<Event>,
    detok: Detokenizer,
    stops: StopMatcher,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    outcome: Option<&'static str>,
    _inflight: InflightGuard,
}

impl Generation {
    pub(crate) fn new(
        app: Arc<AppState>,
        rx: mpsc::UnboundedReceiver<Event>,
        stop: Vec<String>,
        prompt_tokens: usize,
        inflight: InflightGuard,
    ) -> Self {
        Self {
            app,
            rx,
            detok: Detokenizer::default(),
            stops: StopMatcher::new(stop),
            prompt_tokens,
            completion_tokens: 0,
            outcome: None,
            _inflight: inflight,
        }
    }

    /// The next delta; `None` after the end.
    pub async fn next(&mut self) -> Option<Delta> {
        loop {
            if self.outcome.is_some() {
                return None;
            }
            let event = self.rx.recv().await;
            let codec = self.app.codec.clone();
            match event {
                Some(Event::Token(t)) => {
                    self.completion_tokens += 1;
                    let piece = self.detok.push(codec.as_ref(), t);
                    let (text, stopped) = self.stops.push(&piece);
                    if stopped {
                        return Some(self.end(text, FinishReason::Stop));
                    }
                    if !text.is_empty() {
                        return Some(Delta::Text(text));
                    }
                }
                Some(Event::Finished {
                    reason,
                    completion_tokens,
                    ..
                }) => {
                    self.completion_tokens = completion_tokens;
                    let tail = self.detok.flush(codec.as_ref());
                    let (mut text, stopped) = self.stops.push(&tail);
                    if stopped {
                        return Some(self.end(text, FinishReason::Stop));
                    }
                    text.push_str(&self.stops.flush());
                    return Some(self.end(text, reason));
                }
                Some(Event::Failed(msg)) => {
                    self.outcome = Some("error");
                    self.app.metrics.record_finished("error");
                    return Some(Delta::Failed(msg));
                }
                None => {
                    self.outcome = Some("error");
                    self.app.metrics.record_finished("error");
                    return Some(Delta::Failed("the engine stopped".into()));
                }
            }
        }
    }

    fn end(&mut self, text: String, reason: FinishReason) -> Delta {
        self.outcome = Some(reason.as_str());
        self.app.metrics.record_finished(reason.as_str());
        // Closing the channel frees the sequence now (a stop string may end it early).
        self.rx.close();
        Delta::End { text, reason }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            self.app.metrics.record_finished("abort");
        }
    }
}
