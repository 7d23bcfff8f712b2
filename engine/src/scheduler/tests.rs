//! Scheduler tests over the fake model.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::*;
use crate::{metrics::InfoLabels, testing::FakeModel};

const WAIT: Duration = Duration::from_secs(20);

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(
        InfoLabels {
            model: "fake".into(),
            quantization: "f32".into(),
            device: "cpu".into(),
            kernels: "portable".into(),
        },
        0,
    ))
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..Default::default()
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> (GenerationRequest, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let req = GenerationRequest {
        prompt,
        max_tokens,
        sampling: greedy(),
        stop_token_ids: vec![0],
        events: tx,
        arrived: Instant::now(),
    };
    (req, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("channel closed")
}

/// Collects tokens until the end; returns them and the final event.
async fn finish(rx: &mut mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, Event) {
    let mut toks = Vec::new();
    loop {
        match next(rx).await {
            Event::Token(t) => toks.push(t),
            e => return (toks, e),
        }
    }
}

fn spawn(model: Arc<FakeModel>, config: SchedulerConfig) -> Scheduler {
    Scheduler::spawn(model, config, metrics()).expect("spawn")
}

#[tokio::test]
async fn generates_until_max_tokens_then_stop_token() {
    let model = Arc::new(FakeModel::new(10, 1000));
    let s = spawn(model, SchedulerConfig::default());
    let (r, mut rx) = request(vec![1, 2, 3], 4);
    s.handle().submit(r).expect("admitted");
    let (toks, end) = finish(&mut rx).await;
    assert_eq!(toks, vec![4, 5, 6, 7]);
    assert_eq!(
        end,
        Event::Finished {
            reason: FinishReason::Length,
            prompt_tokens: 3,
            completion_tokens: 4
        }
    );

    let (r, mut rx) = request(vec![7], 50);
    s.handle().submit(r).expect("admitted");
    let (toks, end) = finish(&mut rx).await;
    assert_eq!(toks, vec![8, 9]);
    assert_eq!(
        end,
        Event::Finished {
            reason: FinishReason::Stop,
            prompt_tokens: 1,
            completion_tokens: 2
        }
    );
}

/// With an ITL target, a long prompt is prefilled in chunks sized from the measured time per
/// token, so the steps it shares with a running stream end within the target; without one it goes
/// in whole (up to `max_batch_tokens`).
#[tokio::test]
async fn itl_target_sizes_prompt_chunks_from_the_measured_step_cost() {
    let run = |itl_target| async move {
        let model = Arc::new(FakeModel::new(1000, 10_000).with_token_delay(Duration::from_millis(1)));
        let config = SchedulerConfig {
            itl_target,
            ..Default::default()
        };
        let s = spawn(model.clone(), config);
        let (a, mut rx_a) = request(vec![1], 500);
        s.handle().submit(a).expect("admitted");
        assert!(matches!(next(&mut rx_a).await, Event::Token(_)));
        let (b, mut rx_b) = request((1..=300).collect(), 1);
        s.handle().submit(b).expect("admitted");
        let (toks, _) = finish(&mut rx_b).await;
        assert_eq!(toks.len(), 1);
        drop(rx_a);
        // Step sizes while B's prompt went in (the steps of more than A's one decode token).
        model
            .steps()
            .iter()
            .map(|chunks| chunks.iter().sum::<usize>())
            .filter(|&t| t > 1)
            .collect::<Vec<usize>>()
    };
    assert_eq!(run(None).await, [301]);
    let steps = run(Some(Duration::from_millis(40))).await;
    // The first chunk is the cautious first budget (64 with A's token); once timed at ≥ 1 ms a
    // token, 90 % of 40 ms fits at most 36, and the floor keeps at least 16 (but for the prompt's
    // rest).
    let (first, rest) = steps.split_first().expect("steps");
    assert_eq!(*first, 64, "{steps:?}");
    let (last, middle) = rest.split_last().expect("more than one chunk");
    assert!(middle.iter().all(|t| (16..=36).contains(t)), "{steps:?}");
    assert!(*last <= 36, "{steps:?}");
    assert_eq!(steps.iter().sum::<usize>() - steps.len(), 300, "{steps:?}");
}

#[tokio::test]
async fn new_request_joins_running_batch_with_chunked_prefill() {
    let model = Arc::new(FakeModel::new(1000, 10_000).with_step_delay(Duration::from_millis(2)));
    let config = SchedulerConfig {
        max_batch_tokens: 16,
        ..Default::default()
    };
    let s = spawn(model.clone(), config);
    let (a, mut rx_a) = request(vec![1], 500);
    s.handle().submit(a).expect("admitted");
    for _ in 0..3 {
        assert!(matches!(next(&mut rx_a).await, Event::Token(_)));
    }
    let (b, mut rx_b) = request((1..=40).collect(), 3);
    s.handle().submit(b).expect("admitted");
    let (toks, end) = finish(&mut rx_b).await;
    assert_eq!(toks, vec![41, 42, 43]);
    assert!(matches!(
        end,
        Event::Finished {
            reason: FinishReason::Length,
            ..
        }
    ));
    // A is still going: B did not wait for it to end.
    assert!(matches!(rx_a.try_recv(), Ok(Event::Token(_)) | Err(_)));
    drop(rx_a);
    let steps = model.steps();
    // Some step mixed A's decode token with a 15-token chunk of B's prompt (budget 16).
    assert!(
        steps
            .iter()
            .any(|st| st.len() == 2 && st.contains(&1) && st.contains(&15)),
        "{steps:?}"
    );
    assert!(steps.iter().all(|st| st.iter().sum::<usize>() <= 16));
}

#[tokio::test]
async fn admission_limits_reject_at_once() {
    let model = Arc::new(FakeModel::new(1000, 10_000).with_step_delay(Duration::from_millis(2)));
    let config = SchedulerConfig {
        max_running: 1,
        max_waiting: 1,
        max_waiting_tokens: 10,
        ..Default::default()
    };
    let s = spawn(model, config);
    let h = s.handle();
    let (a, mut rx_a) = request(vec![1], 5000);
    h.submit(a).expect("admitted");
    assert!(matches!(next(&mut rx_a).await, Event::Token(_)));
    // Too many waiting prompt tokens.
    let (big, _rx) = request(vec![1; 11], 1);
    assert_eq!(
        h.submit(big),
        Err(AdmissionError::QueueTokensFull {
            max_waiting_tokens: 10
        })
    );
    let (b, _rx_b) = request(vec![1], 1);
    h.submit(b).expect("waits");
    let (c, _rx_c) = request(vec![1], 1);
    let err = h.submit(c).expect_err("rejected");
    assert_eq!(err, AdmissionError::QueueFull { max_waiting: 1 });
    assert!(err.is_overload());
    // Never fits: beyond the context.
    let (d, _rx_d) = request(vec![1; 10], 10_000);
    assert!(matches!(h.submit(d), Err(AdmissionError::ContextTooLong { .. })));
}

#[tokio::test]
async fn disconnect_frees_sequence_within_one_step() {
    let model = Arc::new(FakeModel::new(1000, 10_000).with_step_delay(Duration::from_millis(2)));
    let s = spawn(model.clone(), SchedulerConfig::default());
    let (a, mut rx_a) = request(vec![1], 5000);
    let (b, mut rx_b) = request(vec![2], 5000);
    s.handle().submit(a).expect("admitted");
    s.handle().submit(b).expect("admitted");
    assert!(matches!(next(&mut rx_a).await, Event::Token(_)));
    assert!(matches!(next(&mut rx_b).await, Event::Token(_)));
    drop(rx_b);
    let n = model.steps().len();
    let deadline = Instant::now() + WAIT;
    while model.steps().len() < n + 2 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(matches!(next(&mut rx_a).await, Event::Token(_)));
    }
    let steps = model.steps();
    assert_eq!(steps[n + 1], vec![1], "{steps:?}");
}

#[tokio::test]
async fn kv_reservation_delays_then_rejects() {
    let model = Arc::new(FakeModel::new(1000, 10_000));
    // 64 bytes per token: room for 100 tokens.
    let config = SchedulerConfig {
        kv_pool_bytes: 64 * 100,
        ..Default::default()
    };
    let s = spawn(model, config);
    let h = s.handle();
    let (never, _rx) = request(vec![1; 10], 91);
    assert_eq!(
        h.submit(never),
        Err(AdmissionError::NeverFits {
            needed: 64 * 101,
            pool: 64 * 100
        })
    );
    let (a, mut rx_a) = request(vec![1; 10], 50);
    let (b, mut rx_b) = request(vec![1; 10], 50);
    h.submit(a).expect("admitted");
    h.submit(b).expect("admitted");
    let (toks, _) = finish(&mut rx_a).await;
    assert_eq!(toks.len(), 50);
    // B could only start once A's reservation was released, so all its events come after A's end.
    let (toks, _) = finish(&mut rx_b).await;
    assert_eq!(toks.len(), 50);
    assert_eq!(
        s.handle()
            .shared
            .state
            .lock()
            .map(|q| q.waiting.len())
            .unwrap_or(9),
        0
    );
}

#[tokio::test]
async fn a_repeated_prompt_reuses_the_cached_prefix_and_answers_the_same() {
    let model = Arc::new(FakeModel::new(1000, 10_000));
    let s = spawn(model.clone(), SchedulerConfig::default());
    let h = s.handle();
    let prompt: Vec<u32> = (1..=40).collect();
    let (a, mut rx_a) = request(prompt.clone(), 3);
    h.submit(a).expect("admitted");
    let (first, _) = finish(&mut rx_a).await;
    let n = model.steps().len();

    // The same prompt again: only its last token is computed before decoding.
    let (b, mut rx_b) = request(prompt.clone(), 3);
    h.submit(b).expect("admitted");
    let (second, _) = finish(&mut rx_b).await;
    assert_eq!(second, first);
    let steps = model.steps();
    assert_eq!(steps[n], vec![1], "{steps:?}");

    // A longer prompt sharing the first 40 tokens plus the 2 generated ones that were fed back.
    let mut longer = prompt.clone();
    longer.extend_from_slice(&first[..2]);
    longer.extend([500, 501]);
    let n = model.steps().len();
    let (c, mut rx_c) = request(longer, 2);
    h.submit(c).expect("admitted");
    finish(&mut rx_c).await;
    assert_eq!(model.steps()[n], vec![2], "{:?}", model.steps());

    // Turned off: the whole prompt is prefilled.
    let off = SchedulerConfig {
        prefix_cache_entries: 0,
        ..Default::default()
    };
    let model = Arc::new(FakeModel::new(1000, 10_000));
    let s = spawn(model.clone(), off);
    for _ in 0..2 {
        let (r, mut rx) = request(prompt.clone(), 3);
        s.handle().submit(r).expect("admitted");
        finish(&mut rx).await;
    }
    assert_eq!(model.steps().iter().filter(|s| s == &&vec![40]).count(), 2);
}
