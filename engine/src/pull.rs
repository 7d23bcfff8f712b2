//! `bitscale-engine pull`: fetch model weights into a local file before the server starts.
//!
//! Sources: `https://…` (and `http://…` for local mirrors) and `hf://org/name[@revision]/path`,
//! which maps to `{HF_ENDPOINT:-https://huggingface.co}/org/name/resolve/{revision:-main}/path`.
//! Downloads go to `<dest>.partial` and are renamed when complete, so a finished `dest` is always
//! whole. An interrupted download resumes with an HTTP Range request. With a SHA-256 the finished
//! file is verified, and a mismatch deletes it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default Hugging Face endpoint, overridden by `HF_ENDPOINT`.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The source is not an https/http URL or an `hf://org/name[@rev]/path` reference.
    #[error("unsupported model source {0:?}: expected https://… or hf://org/name[@revision]/path")]
    UnsupportedSource(String),
    /// The request failed.
    #[error("downloading {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("downloading {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Reading or writing the destination failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file's hash is not the expected one.
    #[error("SHA-256 mismatch for {path}: expected {expected}, got {actual}")]
    Checksum {
        /// The file (deleted).
        path: PathBuf,
        /// The expected hash.
        expected: String,
        /// The actual hash.
        actual: String,
    },
}

/// Resolves a source into the URL to download, with `hf_endpoint` for `hf://` sources.
pub fn resolve_url(source: &str, hf_endpoint: &str) -> Result<String, PullError> {
    if source.starts_with("https://") || source.starts_with("http://") {
        return Ok(source.to_owned());
    }
    let unsupported = || PullError::UnsupportedSource(source.to_owned());
    let rest = source.strip_prefix("hf://").ok_or_else(unsupported)?;
    let mut parts = rest.splitn(3, '/');
    let (org, name_rev, path) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(n), Some(p)) if !o.is_empty() && !n.is_empty() && !p.is_empty() => (o, n, p),
        _ => return Err(unsupported()),
    };
    let (name, revision) = name_rev.split_once('@').unwrap_or((name_rev, "main"));
    Ok(format!(
        "{}/{org}/{name}/resolve/{revision}/{path}",
        hf_endpoint.trim_end_matches('/')
    ))
}

/// Downloads `source` to `dest`, resuming a previous partial download, and checks `sha256`.
/// Returns the path written. An existing complete `dest` is verified and kept.
pub async fn pull(source: &str, dest: &Path, sha256: Option<&str>) -> Result<PathBuf, PullError> {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_HF_ENDPOINT.to_owned());
    let url = resolve_url(source, &endpoint)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PullError::Io { path, source }
    };
    if tokio::fs::try_exists(dest).await.map_err(io(dest))? {
        tracing::info!(dest = %dest.display(), "already downloaded");
        verify(dest, sha256).await?;
        return Ok(dest.to_owned());
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
    }
    let partial = partial_path(dest);
    let have = tokio::fs::metadata(&partial).await.map(|m| m.len()).unwrap_or(0);

    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|source| PullError::Http {
            url: url.clone(),
            source,
        })?;
    let mut request = client.get(&url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        request = request.bearer_auth(token);
    }
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|source| PullError::Http {
        url: url.clone(),
        source,
    })?;
    let status = response.status().as_u16();
    let (mut file, mut written, total) = match status {
        206 => {
            tracing::info!(%url, resume_at = have, "resuming download");
            let file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .await
                .map_err(io(&partial))?;
            (file, have, response.content_length().map(|n| n + have))
        }
        // The partial file already holds everything.
        416 if have > 0 => {
            finish(&partial, dest, sha256).await?;
            return Ok(dest.to_owned());
        }
        200 => {
            let file = tokio::fs::File::create(&partial).await.map_err(io(&partial))?;
            (file, 0, response.content_length())
        }
        _ => return Err(PullError::Status { url, status }),
    };

    tracing::info!(%url, dest = %dest.display(), total_bytes = total, "downloading");
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| PullError::Http {
            url: url.clone(),
            source,
        })?;
        file.write_all(&chunk).await.map_err(io(&partial))?;
        written += chunk.len() as u64;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let rate = written as f64 / started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                written_bytes = written,
                total_bytes = total,
                percent = total.map(|t| (written as f64 * 100.0 / t.max(1) as f64).round()),
                bytes_per_second = rate.round(),
                "download progress"
            );
        }
    }
    file.flush().await.map_err(io(&partial))?;
    file.sync_all().await.map_err(io(&partial))?;
    drop(file);
    tracing::info!(
        written_bytes = written,
        seconds = started.elapsed().as_secs_f64(),
        "download complete"
    );
    finish(&partial, dest, sha256).await?;
    Ok(dest.to_owned())
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

async fn finish(partial: &Path, dest: &Path, sha256: Option<&str>) -> Result<(), PullError> {
    verify(partial, sha256).await?;
    tokio::fs::rename(partial, dest)
        .await
        .map_err(|source| PullError::Io {
            path: dest.to_owned(),
            source,
        })
}

async fn verify(path: &Path, expected: Option<&str>) -> Result<(), PullError> {
    let Some(expected) = expected else { return Ok(()) };
    let io = |source| PullError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let actual: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if actual.eq_ignore_ascii_case(expected) {
        tracing::info!(path = %path.display(), "SHA-256 verified");
        Ok(())
    } else {
        // A corrupt file must not be mistaken for a finished download next time.
        let _ = tokio::fs::remove_file(path).await;
        Err(PullError::Checksum {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::{
        Router,
        extract::State,
        http::{HeaderMap, StatusCode, header},
        response::IntoResponse,
        routing::get,
    };

    use super::*;

    #[derive(Clone)]
    struct Served {
        body: Arc<Vec<u8>>,
        range_requests: Arc<AtomicUsize>,
    }

    async fn file(State(s): State<Served>, headers: HeaderMap) -> impl IntoResponse {
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse::<usize>().ok());
        match range {
            Some(start) if start >= s.body.len() => {
                (StatusCode::RANGE_NOT_SATISFIABLE, Vec::new()).into_response()
            }
            Some(start) => {
                s.range_requests.fetch_add(1, Ordering::SeqCst);
                (StatusCode::PARTIAL_CONTENT, s.body[start..].to_vec()).into_response()
            }
            None => (StatusCode::OK, s.body.as_ref().clone()).into_response(),
        }
    }

    async fn serve(body: Vec<u8>) -> (String, Served) {
        let served = Served {
            body: Arc::new(body),
            range_requests: Arc::default(),
        };
        let app = Router::new()
            .route("/org/model/resolve/{rev}/weights.gguf", get(file))
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), served)
    }

    fn body() -> Vec<u8> {
        (0..300_000u32).map(|i| (i % 251) as u8).collect()
    }

    fn sha(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hf_sources_map_to_resolve_urls() {
        assert_eq!(
            resolve_url(
                "hf://HuggingFaceTB/SmolLM2-135M-Instruct@v1/a/b.gguf",
                "https://hf.example/"
            )
            .expect("valid"),
            "https://hf.example/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/v1/a/b.gguf"
        );
        assert_eq!(
            resolve_url("hf://org/name/f.gguf", DEFAULT_HF_ENDPOINT).expect("valid"),
            "https://huggingface.co/org/name/resolve/main/f.gguf"
        );
        assert!(matches!(
            resolve_url("hf://org/name", DEFAULT_HF_ENDPOINT),
            Err(PullError::UnsupportedSource(_))
        ));
        assert!(matches!(
            resolve_url("s3://bucket/x", DEFAULT_HF_ENDPOINT),
            Err(PullError::UnsupportedSource(_))
        ));
    }

    #[tokio::test]
    async fn downloads_and_verifies() {
        let (base, _) = serve(body()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("models/weights.gguf");
        let url = format!("{base}/org/model/resolve/main/weights.gguf");
        pull(&url, &dest, Some(&sha(&body()))).await.expect("pull");
        assert_eq!(std::fs::read(&dest).expect("read"), body());
        assert!(!partial_path(&dest).exists());
        // A second pull keeps the finished file.
        pull(&url, &dest, Some(&sha(&body()))).await.expect("pull again");
    }

    #[tokio::test]
    async fn resumes_a_partial_download_with_a_range_request() {
        let (base, served) = serve(body()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("weights.gguf");
        std::fs::write(partial_path(&dest), &body()[..100_000]).expect("partial");
        let url = format!("{base}/org/model/resolve/main/weights.gguf");
        pull(&url, &dest, Some(&sha(&body()))).await.expect("pull");
        assert_eq!(served.range_requests.load(Ordering::SeqCst), 1);
        assert_eq!(std::fs::read(&dest).expect("read"), body());
    }

    #[tokio::test]
    async fn checksum_mismatch_fails_and_leaves_nothing() {
        let (base, _) = serve(body()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("weights.gguf");
        let url = format!("{base}/org/model/resolve/main/weights.gguf");
        let err = pull(&url, &dest, Some(&"0".repeat(64)))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, PullError::Checksum { .. }), "{err}");
        assert!(!dest.exists() && !partial_path(&dest).exists());
    }

    #[tokio::test]
    async fn http_errors_are_reported_with_the_status() {
        let (base, _) = serve(body()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let err = pull(&format!("{base}/missing.gguf"), &dir.path().join("x"), None)
            .await
            .expect_err("404");
        assert!(matches!(err, PullError::Status { status: 404, .. }), "{err}");
    }
}
