//! `bitscale-engine serve --device cuda` where CUDA cannot be used exits at start, non-zero, with an
//! error that says why: a build without the `cuda` feature names the rebuild; a cuda build on a
//! machine without a GPU says no driver or device was found.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bitscale_engine::model::testmodel::{TestModelSpec, write_test_model};

#[test]
fn serve_on_cuda_without_cuda_fails_at_start() {
    if cfg!(feature = "cuda") && std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("skipped: this machine has an NVIDIA driver, so `--device cuda` may well start");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_test_model(dir.path(), &TestModelSpec::default()).expect("test model");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitscale-engine"))
        .args(["serve", "--device", "cuda", "--port", "0", "--log-format", "text"])
        .arg("--model")
        .arg(&files.gguf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("`serve --device cuda` still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::io::read_to_string(child.stderr.take().expect("stderr")).expect("stderr");

    assert_eq!(status.code(), Some(1), "exit status {status}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "a panic, not an error:\n{stderr}");
    let expected: &[&str] = if cfg!(feature = "cuda") {
        &["--device cuda: no CUDA driver or device found"]
    } else {
        &[
            "--device cuda: this bitscale-engine was built without CUDA support",
            "--features cuda",
        ]
    };
    for want in expected {
        assert!(stderr.contains(want), "stderr lacks {want:?}:\n{stderr}");
    }
}
