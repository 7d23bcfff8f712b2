//! Engine series for N InferenceServices without N engines: one loopback HTTP endpoint serving,
//! for every service, the series a `bitscale-engine` pod exports (by their real names, with the
//! labels the chart's relabeling gives them), and a Prometheus of the benchmark's own scraping
//! it. The operator's queries then cost what they would cost against N real services.
//!
//! Every service reports one pod and no traffic (its counters stand still, so its measured demand
//! is zero and nothing scales up); the first `active` services' gauges jitter at every scrape, as
//! a service with steady traffic does, so their samples change from round to round and the
//! operator reconciles them, but by less than `status.observed` records as change (see the
//! operator's `controller::settle`), so their statuses are rewritten only when the recorded
//! figures age out.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitscale_api::telemetry::{
    SERIES_INSTANCE, SERIES_NAMESPACE, SERIES_POD, SERIES_VARIANT, engine_series as s,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    process::Child,
};

/// What the exporter serves.
#[derive(Clone, Debug)]
pub struct Population {
    /// Namespace of every service.
    pub namespace: String,
    /// Service names.
    pub services: Vec<String>,
    /// The variant label every service reports.
    pub variant: String,
    /// How many services (the first ones) have gauges that move.
    pub active: usize,
}

/// A running exporter; stops when dropped.
pub struct Exporter {
    /// Its `host:port`.
    pub address: String,
    /// Bytes of the last page served.
    pub page_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Exporter {
    /// Serves `population` on a free loopback port.
    pub async fn start(population: Population) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let page_bytes = Arc::new(AtomicU64::new(0));
        let bytes = page_bytes.clone();
        let population = Arc::new(population);
        let task = tokio::spawn(async move {
            let scrapes = AtomicU64::new(0);
            while let Ok((mut socket, _)) = listener.accept().await {
                let page = render(&population, scrapes.fetch_add(1, Ordering::Relaxed));
                bytes.store(page.len() as u64, Ordering::Relaxed);
                // One request per connection: read the head, answer, close.
                let mut head = [0u8; 4096];
                let _ = socket.read(&mut head).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    page.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.write_all(page.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        Ok(Self {
            address,
            page_bytes,
            task,
        })
    }
}

/// The exposition page at scrape number `scrape`.
pub fn render(population: &Population, scrape: u64) -> String {
    let mut page = String::with_capacity(population.services.len() * 3_000);
    for (i, service) in population.services.iter().enumerate() {
        let labels = format!(
            "{SERIES_NAMESPACE}=\"{}\",{SERIES_INSTANCE}=\"{service}\",{SERIES_VARIANT}=\"{}\",{SERIES_POD}=\"{service}-0\"",
            population.namespace, population.variant
        );
        // Jittering gauges: a KV usage that differs at every scrape, by a few points.
        let kv = if i < population.active {
            0.3 + (scrape % 5) as f64 / 100.0
        } else {
            0.0
        };
        service_series(&mut page, &labels, kv);
    }
    page
}

fn service_series(page: &mut String, l: &str, kv: f64) {
    // Writing into a String cannot fail.
    let _ = writeln!(
        page,
        "{}{{{l},model=\"m\",quantization=\"q8_0\",device=\"cpu\"}} 1",
        s::INFO
    );
    for counter in [
        s::GENERATION_TOKENS,
        s::PROMPT_TOKENS,
        s::REQUEST_SUCCESS,
        s::REQUEST_REJECTED,
    ] {
        let _ = writeln!(page, "{counter}{{{l}}} 100");
    }
    for histogram in [s::TIME_TO_FIRST_TOKEN, s::INTER_TOKEN_LATENCY] {
        for le in ["0.1", "1.0", "+Inf"] {
            let _ = writeln!(page, "{histogram}_bucket{{{l},le=\"{le}\"}} 10");
        }
        let _ = writeln!(page, "{histogram}_sum{{{l}}} 0.5\n{histogram}_count{{{l}}} 10");
    }
    for histogram in [
        s::ITERATION_DURATION,
        s::ITERATION_TOKENS,
        s::ITERATION_BATCH_SIZE,
    ] {
        let _ = writeln!(page, "{histogram}_sum{{{l}}} 10\n{histogram}_count{{{l}}} 10");
    }
    let _ = writeln!(
        page,
        "{}{{{l}}} 0\n{}{{{l}}} 0\n{}{{{l}}} {kv}",
        s::REQUESTS_RUNNING,
        s::REQUESTS_WAITING,
        s::KV_CACHE_USAGE
    );
}

/// A Prometheus of the benchmark's own, scraping one exporter.
pub struct OwnPrometheus {
    /// Its base URL.
    pub url: String,
    child: Child,
    _home: tempfile::TempDir,
}

impl OwnPrometheus {
    /// Starts `binary` scraping `target` every `interval` and waits until it is ready.
    pub async fn start(
        binary: &Path,
        target: &str,
        interval: Duration,
        logs: PathBuf,
    ) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let interval = format!("{}s", interval.as_secs().max(1));
        let config = home.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\nscrape_configs:\n\
                 - job_name: scale-bench-engines\n  honor_labels: true\n  static_configs:\n\
                 \x20 - targets: ['{target}']\n"
            ),
        )?;
        let log = std::fs::File::create(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                home.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http
            .get(format!("{url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "Prometheus was not ready within 60s; see {}",
                logs.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            url,
            child,
            _home: home,
        })
    }

    /// Waits until Prometheus holds `count` services' info series.
    pub async fn await_services(&self, count: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        loop {
            let found = self.count_services(&http).await.unwrap_or(0);
            if found >= count {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "Prometheus holds {found} of {count} services' series after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn count_services(&self, http: &reqwest::Client) -> anyhow::Result<usize> {
        let body: serde_json::Value = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", format!("count({})", s::INFO))])
            .send()
            .await?
            .json()
            .await?;
        let value = body["data"]["result"][0]["value"][1].as_str().unwrap_or("0");
        Ok(value.parse::<f64>().unwrap_or(0.0) as usize)
    }

    /// The resident memory of the Prometheus process, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        super::operator::status_kib(self.child.id()?, "VmRSS:").map(|k| k * 1024)
    }
}
