//! The real `bitscale-engine serve` binary on SIGTERM: readiness turns false, new requests are
//! refused, the request in flight runs to its end, and the process exits 0.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bitscale_engine::model::testmodel::{TestModelSpec, write_test_model};
use futures::StreamExt;

const MAX_TOKENS: usize = 1500;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Wide enough that a long completion takes a few seconds on one thread.
    let spec = TestModelSpec {
        hidden: 256,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        ffn: 1024,
        context: 2048,
        ..TestModelSpec::default()
    };
    let files = write_test_model(dir.path(), &spec).expect("test model");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitscale-engine"))
        .args(["serve", "--quantization", "f32", "--threads", "1", "--port"])
        .arg(port.to_string())
        .arg("--model")
        .arg(&files.gguf)
        .args(["--grace-period", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the engine starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let body = serde_json::json!({
        "prompt": "a", "max_tokens": MAX_TOKENS, "temperature": 0,
        "ignore_eos": true, "stream": true,
    });
    let response = http
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("stream starts");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("data:") {
        let chunk = stream.next().await.expect("a first event").expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    // Draining: not ready, and new work is refused, while the stream goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http
            .get(format!("{base}/ready"))
            .send()
            .await
            .expect("still serving probes");
        if ready.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/ready did not turn 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = http
        .post(format!("{base}/v1/completions"))
        .json(&serde_json::json!({"prompt": "a", "max_tokens": 1}))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 503);

    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream is not cut")));
    }
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    assert!(text.contains("\"finish_reason\":\"length\""), "ran to max_tokens");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
