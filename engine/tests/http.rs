//! HTTP tests: the real server in-process on a free port, over the fake model and byte codec.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use bitscale_engine::{
    bench::{BenchArgs, CapacityReport},
    scheduler::SchedulerConfig,
    server::{RunningServer, ServerConfig, start},
    testing::{ByteCodec, FakeModel},
};
use futures::StreamExt;
use serde_json::{Value, json};

async fn server(model: FakeModel, scheduler: SchedulerConfig) -> (RunningServer, String) {
    let config = ServerConfig {
        max_context: None,
        host: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        served_model_name: "fake".into(),
        quantization: "f32".into(),
        device: "cpu".into(),
        scheduler,
    };
    let s = start(Arc::new(model), Arc::new(ByteCodec::default()), config)
        .await
        .expect("server starts");
    let base = format!("http://{}", s.local_addr());
    (s, base)
}

fn fake() -> FakeModel {
    FakeModel::new(257, 512)
}

async fn post(base: &str, path: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request")
}

/// The server's `/metrics` page.
async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Reads an SSE body into its `data:` payloads.
async fn sse_frames(resp: reqwest::Response) -> Vec<String> {
    let body = tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("stream ends")
        .expect("body");
    body.split("\n\n")
        .filter_map(|f| f.trim().strip_prefix("data:").map(|d| d.trim().to_string()))
        .collect()
}

#[tokio::test]
async fn completion_and_chat_non_streaming() {
    let (s, base) = server(fake(), SchedulerConfig::default()).await;
    let r = post(
        &base,
        "/v1/completions",
        r#"{"model":"fake","prompt":"a","max_tokens":3,"temperature":0}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["choices"][0]["text"], "bcd");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4})
    );
    // A stop string cuts the text and finishes with "stop".
    let r = post(
        &base,
        "/v1/completions",
        r#"{"prompt":"a","max_tokens":10,"temperature":0,"stop":["e"]}"#,
    )
    .await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (
            v["choices"][0]["text"].as_str(),
            v["choices"][0]["finish_reason"].as_str()
        ),
        (Some("bcd"), Some("stop"))
    );
    let r = post(
        &base,
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"temperature":0}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    // "assistant:" ends with ':' (58): next bytes are ';' and '<'.
    assert_eq!(v["choices"][0]["message"]["content"], ";<");
    let models: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "fake");
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

#[tokio::test]
async fn streaming_ends_with_done_and_usage() {
    let (s, base) = server(fake(), SchedulerConfig::default()).await;
    let r = post(
        &base,
        "/v1/completions",
        r#"{"prompt":"a","max_tokens":4,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let frames = sse_frames(r).await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).expect("json"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "bcde");
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["completion_tokens"], 4);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "length")
    );

    let r = post(
        &base,
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":3,"temperature":0,"stream":true}"#,
    )
    .await;
    let frames = sse_frames(r).await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&frames[0]).expect("json");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let metrics = metrics_text(&base).await;
    for name in [
        "bitscale_engine_time_to_first_token_seconds_bucket",
        "bitscale_engine_inter_token_latency_seconds_bucket",
        "bitscale_engine_e2e_request_latency_seconds_count",
        "bitscale_engine_request_queue_time_seconds_count",
        "bitscale_engine_num_requests_running",
        "bitscale_engine_num_requests_waiting",
        "bitscale_engine_num_requests_capacity 16",
        "bitscale_engine_kv_cache_usage_perc",
        "bitscale_engine_prompt_tokens_total",
        "bitscale_engine_generation_tokens_total",
        "bitscale_engine_request_success_total{finished_reason=\"length\"} 2",
        "bitscale_engine_iteration_tokens_bucket",
        "bitscale_engine_iteration_duration_seconds_count",
        // No --itl-target: every step may carry --max-batch-tokens.
        "bitscale_engine_step_token_budget 512",
        "bitscale_engine_info{model=\"fake\",quantization=\"f32\",device=\"cpu\",kernels=",
        "bitscale_engine_weight_bytes",
        "bitscale_engine_kv_pool_bytes",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    // Every step is timed: as many step durations as steps' token counts, and some of each.
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let steps = count("bitscale_engine_iteration_duration_seconds_count");
    assert!(steps > 0.0, "no step timed in\n{metrics}");
    assert_eq!(steps, count("bitscale_engine_iteration_tokens_count"));
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let (s, base) = server(fake(), SchedulerConfig::default()).await;
    let long = "x".repeat(600);
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("/v1/completions", "{not json".into(), None),
        (
            "/v1/completions",
            r#"{"prompt":"a","temperature":"hot"}"#.into(),
            Some("temperature"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"a","temperature":-0.5}"#.into(),
            Some("temperature"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"a","top_p":1.5}"#.into(),
            Some("top_p"),
        ),
        ("/v1/completions", r#"{"prompt":"a","n":3}"#.into(), Some("n")),
        (
            "/v1/completions",
            r#"{"prompt":"a","model":"gpt-9"}"#.into(),
            Some("model"),
        ),
        ("/v1/completions", r#"{"prompt":""}"#.into(), Some("prompt")),
        (
            "/v1/completions",
            format!(r#"{{"prompt":"{long}"}}"#),
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"a","max_tokens":100000}"#.into(),
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"a","max_tokens":"ten"}"#.into(),
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":"hi"}"#.into(),
            Some("messages"),
        ),
    ];
    for (path, body, param) in cases {
        let r = post(&base, path, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(v["error"]["param"].as_str(), param, "{body}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

#[tokio::test]
async fn saturation_answers_429_with_retry_after() {
    let model = fake().with_step_delay(Duration::from_millis(5));
    let (s, base) = server(
        model,
        SchedulerConfig {
            max_running: 1,
            max_waiting: 0,
            ..Default::default()
        },
    )
    .await;
    let body = r#"{"prompt":"a","max_tokens":100,"temperature":0,"stream":true,"ignore_eos":true}"#;
    let first = post(&base, "/v1/completions", body).await;
    assert_eq!(first.status(), 200);
    let mut stream = first.bytes_stream();
    let _ = stream.next().await; // the first token is out, so the request is running
    let r = post(&base, "/v1/completions", body).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    drop(stream);
    let metrics = metrics_text(&base).await;
    assert!(
        metrics.contains("bitscale_engine_request_rejected_total{reason=\"queue_full\"} 1"),
        "{metrics}"
    );
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

#[tokio::test]
async fn drain_turns_ready_false_and_finishes_in_flight() {
    let model = fake().with_step_delay(Duration::from_millis(5));
    let (s, base) = server(model, SchedulerConfig::default()).await;
    assert_eq!(get_status(&base, "/ready").await, 200);
    let body = r#"{"prompt":"a","max_tokens":40,"temperature":0,"stream":true,"ignore_eos":true}"#;
    let inflight = post(&base, "/v1/completions", body).await;
    assert_eq!(inflight.status(), 200);
    s.begin_drain();
    assert_eq!(get_status(&base, "/ready").await, 503);
    assert_eq!(get_status(&base, "/health").await, 200);
    assert_eq!(post(&base, "/v1/completions", body).await.status(), 503);
    let drain = tokio::spawn(s.drain(Duration::from_secs(20)));
    let frames = sse_frames(inflight).await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    assert!(
        drain.await.expect("join").expect("drain"),
        "in-flight request finished within grace"
    );
}

/// Runs `tests/openai_client.py` (the official `openai` Python client, streaming included) against
/// the server. The interpreter is `$BITSCALE_PYTHON` (else `python3`); the test is skipped when it
/// lacks `openai`, unless `BITSCALE_REQUIRE_OPENAI=1` (as `scripts/test` sets), where that fails.
#[tokio::test]
async fn official_openai_python_client() {
    let python = std::env::var("BITSCALE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has_openai = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(
            std::env::var("BITSCALE_REQUIRE_OPENAI").as_deref() != Ok("1"),
            "{python} cannot import `openai`; run scripts/python-env.sh"
        );
        eprintln!("skipped: python3 with the `openai` package is not available");
        return;
    }
    let (s, base) = server(fake(), SchedulerConfig::default()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(script)
            .arg(&base)
            .arg("fake")
            .output(),
    )
    .await
    .expect("python finished")
    .expect("python ran");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

fn test_tokenizer() -> bitscale_engine::model::Tokenizer {
    use bitscale_engine::model::testmodel;
    let json = serde_json::to_vec(&testmodel::tokenizer_json()).expect("json");
    bitscale_engine::model::Tokenizer::from_json_bytes(
        &json,
        Some(testmodel::CHAT_TEMPLATE.to_string()),
        &["<|im_end|>", "</s>"],
        Some("<s>"),
    )
    .expect("test tokenizer")
}

/// The fake model behind the test model's real BPE tokenizer and ChatML template.
#[tokio::test]
async fn real_tokenizer_streams_and_chats() {
    let tok = test_tokenizer();
    let vocab = tok.vocab_size();
    let config = ServerConfig {
        max_context: None,
        host: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        served_model_name: "tiny".into(),
        quantization: "q8_0".into(),
        device: "cpu".into(),
        scheduler: SchedulerConfig::default(),
    };
    let s = start(Arc::new(FakeModel::new(vocab, 512)), Arc::new(tok), config)
        .await
        .expect("start");
    let base = format!("http://{}", s.local_addr());
    for (path, body) in [
        (
            "/v1/completions",
            r#"{"prompt":"the cat is on the mat","max_tokens":20,"stream":true,"seed":3}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"héllo 👋"}],"max_tokens":20,"stream":true}"#,
        ),
    ] {
        let frames = sse_frames(post(&base, path, body).await).await;
        assert_eq!(frames.last().map(String::as_str), Some("[DONE]"), "{path}");
        for f in &frames[..frames.len() - 1] {
            let v: Value = serde_json::from_str(f).expect("chunk json");
            assert!(v.get("error").is_none(), "{f}");
        }
    }
    let r = post(
        &base,
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(v["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 3), "{v}");
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

mod tokenization {
    use bitscale_engine::server::{Detokenizer, TextCodec};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any text encodes, and streaming its tokens back through the detokenizer gives the text.
        #[test]
        fn encode_then_stream_decode_round_trips(text in "\\PC{0,40}") {
            let tok = super::test_tokenizer();
            let ids = TextCodec::encode(&tok, &text, false).expect("encode");
            let mut d = Detokenizer::default();
            let mut out = String::new();
            for id in ids {
                out.push_str(&d.push(&tok, id));
            }
            out.push_str(&d.flush(&tok));
            prop_assert_eq!(out, text);
        }
    }
}

/// `bench` flags for the fake server at `url`: short requests, one stream, 50 requests at most.
fn bench_args(url: String) -> BenchArgs {
    BenchArgs {
        url,
        concurrency: vec![1],
        prompt_tokens: 4,
        max_tokens: 8,
        duration: Duration::from_millis(300),
        max_requests: 50,
        model: None,
        slo_ttft: None,
        slo_itl: None,
        max_concurrency: 64,
        range_ratio: 0.0,
        seed: 0,
        request_rate: vec![],
    }
}

#[tokio::test]
async fn bench_measures_a_running_server() {
    let (s, base) = server(
        fake().with_step_delay(Duration::from_millis(1)),
        SchedulerConfig::default(),
    )
    .await;
    let args = BenchArgs {
        concurrency: vec![1, 2],
        duration: Duration::from_millis(500),
        // Varied lengths take the same path as fixed ones and must not fail a request.
        range_ratio: 0.5,
        seed: 1,
        ..bench_args(base)
    };
    let report = bitscale_engine::bench::bench(&args).await.expect("bench");
    assert_eq!(report.model, "fake");
    assert_eq!(report.range_ratio, 0.5);
    assert_eq!(report.levels.len(), 2);
    for l in &report.levels {
        assert!(l.requests > 0 && l.errors == 0, "{l:?}");
        assert!(l.ttft_s.is_some() && l.itl_s.is_some(), "{l:?}");
        assert!(l.generated_tokens_per_s > 0.0);
    }
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

#[tokio::test]
async fn bench_open_loop_offers_the_requested_rate_and_caps_what_is_in_flight() {
    let (s, base) = server(
        fake().with_step_delay(Duration::from_millis(2)),
        SchedulerConfig::default(),
    )
    .await;
    let mut args = BenchArgs {
        max_tokens: 4,
        duration: Duration::from_millis(1000),
        max_requests: 10_000,
        seed: 5,
        request_rate: vec![40.0],
        ..bench_args(base)
    };
    let report = bitscale_engine::bench::bench(&args).await.expect("bench");
    // The rate replaces the closed-loop levels.
    assert_eq!(report.levels.len(), 1);
    let l = &report.levels[0];
    assert_eq!(
        (l.request_rate, l.dropped, l.errors),
        (Some(40.0), Some(0), 0),
        "{l:?}"
    );
    // 40 arrivals expected in the second; a Poisson count is within 20..60 but for 1 in 10^4.
    assert!((20..=60).contains(&l.requests), "{l:?}");
    assert!(l.ttft_s.is_some() && l.itl_s.is_some(), "{l:?}");

    // One request in flight at most, arrivals far faster than a request takes: most are dropped,
    // none fails.
    args.max_concurrency = 1;
    args.request_rate = vec![2000.0];
    args.duration = Duration::from_millis(300);
    let l = &bitscale_engine::bench::bench(&args).await.expect("bench").levels[0];
    assert_eq!((l.concurrency, l.errors), (1, 0), "{l:?}");
    assert!(l.dropped.is_some_and(|d| d > 10 * l.requests), "{l:?}");
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

#[tokio::test]
async fn loading_placeholder_is_alive_but_not_ready() {
    let p = bitscale_engine::server::serve_loading(Ipv4Addr::LOCALHOST.into(), 0)
        .await
        .expect("bind");
    let base = format!("http://{}", p.local_addr());
    assert_eq!(get_status(&base, "/health").await, 200);
    assert_eq!(get_status(&base, "/ready").await, 503);
    assert_eq!(
        post(&base, "/v1/completions", r#"{"prompt":"a"}"#).await.status(),
        503
    );
    let port = p.local_addr().port();
    p.stop().await;
    // The port is free again for the real server.
    let config = ServerConfig {
        max_context: None,
        host: Ipv4Addr::LOCALHOST.into(),
        port,
        served_model_name: "fake".into(),
        quantization: "f32".into(),
        device: "cpu".into(),
        scheduler: SchedulerConfig::default(),
    };
    let s = start(Arc::new(fake()), Arc::new(ByteCodec::default()), config)
        .await
        .expect("rebind");
    assert_eq!(get_status(&base, "/ready").await, 200);
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

/// The status of `GET {base}{path}`.
async fn get_status(base: &str, path: &str) -> reqwest::StatusCode {
    reqwest::get(format!("{base}{path}")).await.expect(path).status()
}

/// SLO mode against a fake server with 1 ms steps, twice: with the SLO of `args(url)` (a loose
/// one), then with an impossible p95 TTFT of 1 ns and probes of 200 ms.
async fn loose_and_impossible(args: impl FnOnce(String) -> BenchArgs) -> (CapacityReport, CapacityReport) {
    let (s, base) = server(
        fake().with_step_delay(Duration::from_millis(1)),
        SchedulerConfig::default(),
    )
    .await;
    let mut args = args(base);
    let loose = bitscale_engine::bench::capacity(&args).await.expect("capacity");
    args.slo_itl = None;
    args.slo_ttft = Some(Duration::from_nanos(1));
    args.duration = Duration::from_millis(200);
    let impossible = bitscale_engine::bench::capacity(&args).await.expect("capacity");
    s.drain(Duration::from_secs(5)).await.expect("drain");
    (loose, impossible)
}

/// SLO mode finds the highest concurrency meeting the SLO: every level meets a loose one (up to
/// `--max-concurrency`), none meets an impossible one.
#[tokio::test]
async fn bench_slo_mode_finds_the_capacity() {
    let (loose, impossible) = loose_and_impossible(|base| BenchArgs {
        concurrency: vec![],
        duration: Duration::from_millis(300),
        slo_itl: Some(Duration::from_secs(5)),
        max_concurrency: 4,
        ..bench_args(base)
    })
    .await;
    assert_eq!(loose.concurrency, 4, "{loose:?}");
    assert!(loose.sustainable_tokens_per_s > 0.0);
    let tried: Vec<usize> = loose.probes.iter().map(|p| p.concurrency).collect();
    assert_eq!(tried, [1, 2, 4]);
    assert_eq!(impossible.concurrency, 0);
    assert_eq!(impossible.sustainable_tokens_per_s, 0.0);
}

/// With `--request-rate`, SLO mode searches over the offered load (open loop): a loose SLO is met
/// from the start rate up until arrivals find every slot taken, an impossible one at no rate,
/// after halving down to start / 64.
#[tokio::test]
async fn bench_slo_mode_searches_the_offered_load() {
    let (loose, impossible) = loose_and_impossible(|base| BenchArgs {
        concurrency: vec![],
        request_rate: vec![4.0],
        slo_itl: Some(Duration::from_secs(5)),
        // Arrivals are seeded, so the first probe's ~4 requests in a second are the same on every
        // run; a request takes ~10 ms, so two in flight never both stay busy at 4 per second.
        duration: Duration::from_secs(1),
        max_concurrency: 2,
        max_requests: 20,
        ..bench_args(base)
    })
    .await;
    let rate = loose.request_rate.expect("an open-loop result");
    assert!(rate >= 4.0, "{loose:?}");
    assert!(loose.sustainable_tokens_per_s > 0.0);
    assert!(loose.probes.iter().all(|p| p.request_rate.is_some()));
    // The search ended on a failure just above the result: arrivals dropped at the cap of two.
    let above = loose
        .probes
        .iter()
        .filter(|p| p.request_rate.is_some_and(|r| r > rate))
        .min_by(|a, b| a.request_rate.partial_cmp(&b.request_rate).expect("rates"))
        .expect("a failed probe above the result");
    assert!(
        above.dropped.is_some_and(|d| d > 0) || above.rejected_429 > 0,
        "{above:?}"
    );
    assert_eq!(impossible.request_rate, Some(0.0));
    assert_eq!(impossible.sustainable_tokens_per_s, 0.0);
    let lowest = impossible.probes.last().and_then(|p| p.request_rate);
    assert_eq!(lowest, Some(4.0 / 64.0));
}

#[tokio::test]
async fn generation_tokens_counter_matches_usage_when_the_model_stops() {
    let (s, base) = server(fake(), SchedulerConfig::default()).await;
    // The fake model counts up from the last byte: "~" (126) runs to 255, then EOS (256).
    let r = post(
        &base,
        "/v1/completions",
        r#"{"prompt":"~","max_tokens":300,"temperature":0}"#,
    )
    .await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 129);
    let metrics = metrics_text(&base).await;
    assert!(
        metrics.contains("bitscale_engine_generation_tokens_total 129\n"),
        "the stop token is not a generated token:\n{metrics}"
    );
    s.drain(Duration::from_secs(5)).await.expect("drain");
}

#[tokio::test]
async fn an_oversized_body_gets_an_openai_shaped_413() {
    let (s, base) = server(fake(), SchedulerConfig::default()).await;
    let prompt = "a".repeat(3 << 20);
    let r = post(
        &base,
        "/v1/completions",
        &format!(r#"{{"prompt":"{prompt}","max_tokens":1}}"#),
    )
    .await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.expect("an OpenAI-shaped JSON error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "request_too_large");
    // The server is unharmed.
    let r = post(&base, "/v1/completions", r#"{"prompt":"a","max_tokens":1}"#).await;
    assert_eq!(r.status(), 200);
    s.drain(Duration::from_secs(5)).await.expect("drain");
}
