//! `bitscale-engine bench`: a load generator against a running server.
//!
//! For each concurrency level, that many clients send streaming `/v1/completions` requests back to
//! back for `--duration` (closed loop); with `--request-rate`, requests instead arrive as a
//! Poisson process at each offered rate (open loop). The tool prints one JSON document:
//! requests/s, generated tokens/s, and time-to-first-token and inter-token latency percentiles
//! per level. It only talks to loopback addresses and stops after `--max-requests` per level.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::cli::resources::parse_duration;

/// Flags of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    pub concurrency: Vec<usize>,
    /// Approximate prompt length in tokens (a repeated word).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated per request (`ignore_eos` is set, so exactly this many).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// How long each level runs.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Requests per level at most.
    #[arg(long, default_value_t = 10_000)]
    pub max_requests: usize,
    /// The `model` field (default: the first of `/v1/models`).
    #[arg(long)]
    pub model: Option<String>,
    /// SLO mode: the p95 time to first token to meet. With `--slo-itl` (either or both), bench
    /// searches for the highest concurrency meeting the SLO instead of running `--concurrency`,
    /// or, given `--request-rate R`, for the highest offered load (open loop, from `R` on).
    #[arg(long, value_parser = parse_duration)]
    pub slo_ttft: Option<Duration>,
    /// SLO mode: the p95 inter-token latency to meet.
    #[arg(long, value_parser = parse_duration)]
    pub slo_itl: Option<Duration>,
    /// SLO mode: the highest concurrency tried.
    #[arg(long, default_value_t = 64)]
    pub max_concurrency: usize,
    /// Spread of request lengths: each request's prompt and `max_tokens` are drawn uniformly from
    /// `[L·(1 − r), L·(1 + r)]` around `--prompt-tokens` / `--max-tokens` (0: every request the
    /// same). With equal lengths, closed-loop clients that start together stay in lock-step:
    /// every prompt lands in the same step, which real traffic does not do.
    #[arg(long, value_parser = parse_range_ratio, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// Seed of the request lengths drawn with `--range-ratio` (client `i` uses `seed + i`) and of
    /// the arrival times of `--request-rate`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Open-loop mode: offered loads in requests per second, comma-separated, run instead of
    /// `--concurrency`. Requests arrive as a Poisson process whatever the server's pace (as real
    /// users do), at most `--max-concurrency` in flight; an arrival beyond that is not sent and
    /// is counted as `dropped`. In SLO mode, the first rate is where the search starts.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    pub request_rate: Vec<f64>,
}

/// `s` as a number for which `ok` holds, else an error saying it is not `what`.
fn parse_number(s: &str, ok: impl Fn(f64) -> bool, what: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|&v| ok(v))
        .ok_or_else(|| format!("{s:?} is not {what}"))
}

/// `--request-rate`: a positive, finite number of requests per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    parse_number(
        s,
        |r| r > 0.0 && r.is_finite(),
        "a positive number of requests per second",
    )
}

/// Seconds to the next arrival of a Poisson process of `rate` per second (exponentially
/// distributed).
pub fn interarrival(rate: f64, rng: &mut impl rand::Rng) -> f64 {
    // `random` is in [0, 1), so the logarithm's argument is in (0, 1].
    -(1.0 - rng.random::<f64>()).ln() / rate
}

/// `--range-ratio`: a number in `[0, 1)`.
fn parse_range_ratio(s: &str) -> Result<f64, String> {
    parse_number(s, |r| (0.0..1.0).contains(&r), "a number in [0, 1)")
}

/// A length drawn uniformly from `[len·(1 − ratio), len·(1 + ratio)]`, at least 1.
pub fn spread(len: usize, ratio: f64, rng: &mut impl rand::Rng) -> usize {
    let len = len.max(1);
    if ratio <= 0.0 {
        return len;
    }
    let (lo, hi) = (len as f64 * (1.0 - ratio), len as f64 * (1.0 + ratio));
    let lo = (lo.ceil() as usize).max(1);
    rng.random_range(lo..=(hi.floor() as usize).max(lo))
}

/// The SLO searched for, in seconds (`None`: not constrained).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Slo {
    pub ttft_p95_s: Option<f64>,
    pub itl_p95_s: Option<f64>,
}

impl Slo {
    /// Whether a level met the SLO: its p95s within bounds, no errors, no 429s and (open loop) no
    /// arrival dropped at the in-flight cap.
    pub fn met_by(&self, l: &LevelReport) -> bool {
        let within = |bound: Option<f64>, p: &Option<Percentiles>| match (bound, p) {
            (None, _) => true,
            (Some(b), Some(p)) => p.p95 <= b,
            (Some(_), None) => false,
        };
        l.requests > 0
            && l.errors == 0
            && l.rejected_429 == 0
            && l.dropped.unwrap_or(0) == 0
            && within(self.ttft_p95_s, &l.ttft_s)
            && within(self.itl_p95_s, &l.itl_s)
    }
}

/// What SLO mode prints: the capacity of one replica at the SLO.
#[derive(Debug, Serialize)]
pub struct CapacityReport {
    pub url: String,
    pub model: String,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub duration_s: f64,
    pub slo: Slo,
    /// Closed loop: the highest concurrency that met the SLO (0: not even one stream did). Open
    /// loop: the cap on requests in flight (`--max-concurrency`).
    pub concurrency: usize,
    /// Open loop: the highest offered load, in requests per second, that met the SLO (0: not even
    /// the lowest tried did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<f64>,
    /// Generated tokens/s at that concurrency or load: the sustainable throughput per replica.
    pub sustainable_tokens_per_s: f64,
    /// Every concurrency (or offered load) tried, in order.
    pub probes: Vec<LevelReport>,
}

/// The next concurrency to try, given the highest that met the SLO (`good`) and the lowest that
/// did not (`bad`): doubling until a failure, then bisecting. `None` when the search is over.
pub fn next_probe(good: usize, bad: Option<usize>, max: usize) -> Option<usize> {
    match bad {
        None if good == 0 => Some(1),
        None if good >= max => None,
        None => Some((good * 2).min(max)),
        Some(b) if b > good + 1 => Some(good + (b - good) / 2),
        Some(_) => None,
    }
}

/// Open-loop SLO search resolves the capacity to within this factor.
pub const RATE_RESOLUTION: f64 = 1.1;

/// The next offered load to try, given the highest that met the SLO (`good`) and the lowest that
/// did not (`bad`), starting at `start`: doubling until a failure, halving until a success, then
/// bisecting until the two are within [`RATE_RESOLUTION`]. `None` when the search is over,
/// including when even `start / 64` fails (the server cannot meet the SLO at any useful load).
pub fn next_rate(good: Option<f64>, bad: Option<f64>, start: f64) -> Option<f64> {
    match (good, bad) {
        (None, None) => Some(start),
        (Some(g), None) => Some(g * 2.0),
        (None, Some(b)) => (b > start / 64.0).then_some(b / 2.0),
        (Some(g), Some(b)) => (b > g * RATE_RESOLUTION).then_some((g + b) / 2.0),
    }
}

/// Latency percentiles in seconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The result of one concurrency level.
#[derive(Debug, Serialize)]
pub struct LevelReport {
    /// Closed loop: the clients. Open loop: the most requests allowed in flight.
    pub concurrency: usize,
    /// Open loop: the offered load, requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<f64>,
    /// Open loop: arrivals not sent because `concurrency` requests were in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<usize>,
    pub requests: usize,
    pub errors: usize,
    /// The errors by kind (`status 500`, `connect`, `stream cut`, …), so a failing server can be
    /// told from a failing client.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_kinds: BTreeMap<String, usize>,
    pub rejected_429: usize,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub generated_tokens_per_s: f64,
    pub mean_prompt_tokens: f64,
    pub ttft_s: Option<Percentiles>,
    pub itl_s: Option<Percentiles>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub url: String,
    pub model: String,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// `--range-ratio`: lengths varied by up to this fraction either way.
    pub range_ratio: f64,
    pub duration_s: f64,
    pub levels: Vec<LevelReport>,
}

/// Nearest-rank percentiles of `v` (sorted in place); `None` when empty.
pub fn percentiles(v: &mut [f64]) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    Some(Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    })
}

/// Refuses anything but a loopback URL.
pub fn check_loopback(url: &str) -> anyhow::Result<reqwest::Url> {
    let u = reqwest::Url::parse(url).with_context(|| format!("bad --url {url}"))?;
    let host = u
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ok = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!("bench only targets loopback addresses (127.0.0.1, ::1, localhost), not {url}");
    }
    Ok(u)
}

/// Runs `bench` and prints the JSON report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if args.slo_ttft.is_some() || args.slo_itl.is_some() {
        let report = rt.block_on(capacity(&args))?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let report = rt.block_on(bench(&args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// SLO mode: searches for the highest concurrency (or, with `--request-rate`, the highest
/// offered load) whose p95 TTFT / ITL meet the SLO.
pub async fn capacity(args: &BenchArgs) -> anyhow::Result<CapacityReport> {
    let slo = Slo {
        ttft_p95_s: args.slo_ttft.map(|d| d.as_secs_f64()),
        itl_p95_s: args.slo_itl.map(|d| d.as_secs_f64()),
    };
    let base = check_loopback(&args.url)?;
    let client = bench_client()?;
    let model = resolve_model(&client, &base, args).await?;
    let mut best_tps = 0.0;
    let mut probes = Vec::new();
    let mut probe = async |load: Load| -> anyhow::Result<bool> {
        let l = level(&client, &base, &model, args, load).await?;
        let met = slo.met_by(&l);
        tracing::info!(?load, met, tokens_per_s = l.generated_tokens_per_s, "SLO probe");
        if met {
            best_tps = l.generated_tokens_per_s;
        }
        probes.push(l);
        Ok(met)
    };
    let (concurrency, request_rate) = if let Some(&start) = args.request_rate.first() {
        let (mut good, mut bad) = (None, None);
        while let Some(r) = next_rate(good, bad, start) {
            if probe(Load::Rate(r)).await? {
                good = Some(r);
            } else {
                bad = Some(r);
            }
        }
        (args.max_concurrency.max(1), Some(good.unwrap_or(0.0)))
    } else {
        let (mut good, mut bad) = (0usize, None);
        while let Some(c) = next_probe(good, bad, args.max_concurrency.max(1)) {
            if probe(Load::Clients(c)).await? {
                good = c;
            } else {
                bad = Some(c);
            }
        }
        (good, None)
    };
    Ok(CapacityReport {
        url: args.url.clone(),
        model,
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        duration_s: args.duration.as_secs_f64(),
        slo,
        concurrency,
        request_rate,
        sustainable_tokens_per_s: best_tps,
        probes,
    })
}

async fn resolve_model(
    client: &reqwest::Client,
    base: &reqwest::Url,
    args: &BenchArgs,
) -> anyhow::Result<String> {
    if let Some(m) = &args.model {
        return Ok(m.clone());
    }
    let v: serde_json::Value = client
        .get(base.join("/v1/models")?)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["data"][0]["id"]
        .as_str()
        .context("/v1/models lists no model")?
        .to_string())
}

/// Runs every level and returns the report.
pub async fn bench(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let base = check_loopback(&args.url)?;
    let client = bench_client()?;
    let model = resolve_model(&client, &base, args).await?;
    let mut levels = Vec::new();
    if args.request_rate.is_empty() {
        for &c in &args.concurrency {
            levels.push(level(&client, &base, &model, args, Load::Clients(c.max(1))).await?);
        }
    }
    for &rate in &args.request_rate {
        levels.push(level(&client, &base, &model, args, Load::Rate(rate)).await?);
    }
    Ok(BenchReport {
        url: args.url.clone(),
        model,
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        range_ratio: args.range_ratio,
        duration_s: args.duration.as_secs_f64(),
        levels,
    })
}

#[derive(Default)]
struct Samples {
    ttft: Vec<f64>,
    itl: Vec<f64>,
    requests: usize,
    errors: usize,
    error_kinds: BTreeMap<String, usize>,
    rejected: usize,
    generated: usize,
    prompt: usize,
}

/// How a level loads the server.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// Closed loop: this many clients, each sending its next request when the last one ends.
    Clients(usize),
    /// Open loop: Poisson arrivals at this many requests per second.
    Rate(f64),
}

impl Samples {
    /// Adds one request's outcome; true when the server shed it (429).
    fn record(&mut self, r: Result<RequestOutcome, Failure>) -> bool {
        match r {
            Ok(o) => {
                self.requests += 1;
                self.generated += o.completion_tokens;
                self.prompt += o.prompt_tokens;
                self.ttft.extend(o.ttft);
                self.itl.extend(o.itl);
                false
            }
            Err(Failure::Rejected) => {
                self.rejected += 1;
                true
            }
            Err(Failure::Error(kind)) => {
                self.errors += 1;
                *self.error_kinds.entry(kind).or_default() += 1;
                false
            }
        }
    }
}

async fn level(
    client: &reqwest::Client,
    base: &reqwest::Url,
    model: &str,
    args: &BenchArgs,
    load: Load,
) -> anyhow::Result<LevelReport> {
    let url = base.join("/v1/completions")?;
    let (prompt_tokens, max_tokens, ratio) = (args.prompt_tokens, args.max_tokens, args.range_ratio);
    let model = model.to_owned();
    let body = move |rng: &mut StdRng| {
        serde_json::json!({
            "model": model,
            "prompt": "the ".repeat(spread(prompt_tokens, ratio, rng)),
            "max_tokens": spread(max_tokens, ratio, rng),
            "temperature": 0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    };
    let samples = Arc::new(Mutex::new(Samples::default()));
    let t0 = Instant::now();
    let deadline = t0 + args.duration;
    let (concurrency, dropped) = match load {
        Load::Clients(concurrency) => {
            let started = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..concurrency)
                .map(|i| {
                    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(i as u64));
                    let (client, url, body, samples, started) = (
                        client.clone(),
                        url.clone(),
                        body.clone(),
                        samples.clone(),
                        started.clone(),
                    );
                    let max_requests = args.max_requests;
                    tokio::spawn(async move {
                        while Instant::now() < deadline
                            && started.fetch_add(1, Ordering::SeqCst) < max_requests
                        {
                            let r = one_request(&client, &url, &body(&mut rng)).await;
                            let Ok(rejected) = samples.lock().map(|mut s| s.record(r)) else {
                                return;
                            };
                            if rejected {
                                // Back off a little so a saturated server is not hammered.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await?;
            }
            (concurrency, None)
        }
        Load::Rate(rate) => {
            let cap = args.max_concurrency.max(1);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(cap));
            let mut rng = StdRng::seed_from_u64(args.seed);
            let (mut requests, mut dropped) = (Vec::new(), 0);
            let mut next = t0;
            while next < deadline && requests.len() + dropped < args.max_requests {
                tokio::time::sleep_until(next.into()).await;
                next += Duration::from_secs_f64(interarrival(rate, &mut rng));
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    dropped += 1;
                    continue;
                };
                let (client, url, body, samples) =
                    (client.clone(), url.clone(), body(&mut rng), samples.clone());
                requests.push(tokio::spawn(async move {
                    let r = one_request(&client, &url, &body).await;
                    drop(permit);
                    if let Ok(mut s) = samples.lock() {
                        s.record(r);
                    }
                }));
            }
            for r in requests {
                r.await?;
            }
            (cap, Some(dropped))
        }
    };
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    let mut s = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(LevelReport {
        concurrency,
        request_rate: match load {
            Load::Rate(rate) => Some(rate),
            Load::Clients(_) => None,
        },
        dropped,
        requests: s.requests,
        errors: s.errors,
        error_kinds: std::mem::take(&mut s.error_kinds),
        rejected_429: s.rejected,
        elapsed_s: elapsed,
        requests_per_s: s.requests as f64 / elapsed,
        generated_tokens_per_s: s.generated as f64 / elapsed,
        mean_prompt_tokens: if s.requests > 0 {
            s.prompt as f64 / s.requests as f64
        } else {
            0.0
        },
        ttft_s: percentiles(&mut s.ttft),
        itl_s: percentiles(&mut s.itl),
    })
}

struct RequestOutcome {
    ttft: Option<f64>,
    itl: Vec<f64>,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// The HTTP client of a benchmark: a new connection per request. Reusing idle keep-alive
/// connections raced with servers that close them (llama-server failed 3–20 requests per run
/// with transport errors on reused connections); a local connect costs far less than a request.
fn bench_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .pool_max_idle_per_host(0)
        .build()?)
}

/// Why a request did not complete.
enum Failure {
    /// 429: the server shed load.
    Rejected,
    /// Anything else (transport error, other status, cut stream), by kind.
    Error(String),
}

/// A transport error's kind, without the parts (addresses, ports) that vary per request.
fn transport(what: &str, e: &reqwest::Error) -> Failure {
    let kind = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    };
    Failure::Error(format!("{what}: {kind}"))
}

async fn one_request(
    client: &reqwest::Client,
    url: &reqwest::Url,
    body: &serde_json::Value,
) -> Result<RequestOutcome, Failure> {
    let t0 = Instant::now();
    let resp = client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| transport("request", &e))?;
    if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Rejected);
    }
    if !resp.status().is_success() {
        return Err(Failure::Error(format!("status {}", resp.status().as_u16())));
    }
    let mut out = RequestOutcome {
        ttft: None,
        itl: Vec::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let mut last: Option<Instant> = None;
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport("stream", &e))?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&frame);
            let Some(data) = text.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                // Servers that send no usage (e.g. llama.cpp's without `include_usage` support): one
                // token per text chunk.
                if out.completion_tokens == 0 {
                    out.completion_tokens = out.itl.len() + usize::from(out.ttft.is_some());
                }
                return Ok(out);
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                out.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            let has_text = v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match last {
                    None => out.ttft = Some((now - t0).as_secs_f64()),
                    Some(l) => out.itl.push((now - l).as_secs_f64()),
                }
                last = Some(now);
            }
        }
    }
    Err(Failure::Error("stream ended without [DONE]".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            percentiles(&mut v),
            Some(Percentiles {
                p50: 50.0,
                p95: 95.0,
                p99: 99.0
            })
        );
        assert_eq!(percentiles(&mut []), None);
    }

    #[test]
    fn slo_search_doubles_then_bisects() {
        // Capacity 5: 1, 2, 4 pass; 8 fails; 6 fails; 5 passes; done.
        let capacity = 5;
        let (mut good, mut bad, mut tried) = (0, None, Vec::new());
        while let Some(c) = next_probe(good, bad, 64) {
            tried.push(c);
            if c <= capacity {
                good = c;
            } else {
                bad = Some(c);
            }
        }
        assert_eq!(tried, [1, 2, 4, 8, 6, 5]);
        assert_eq!(good, 5);
        // Never beyond the maximum, and 0 when one stream already fails.
        assert_eq!(next_probe(4, None, 4), None);
        assert_eq!(next_probe(0, Some(1), 64), None);
    }

    #[test]
    fn rate_search_doubles_halves_then_bisects_to_the_resolution() {
        let search = |capacity: f64, start: f64| {
            let (mut good, mut bad, mut tried) = (None, None, Vec::new());
            while let Some(r) = next_rate(good, bad, start) {
                tried.push(r);
                assert!(tried.len() < 40, "search does not end: {tried:?}");
                if r <= capacity {
                    good = Some(r);
                } else {
                    bad = Some(r);
                }
            }
            (good, bad, tried)
        };
        // Capacity 5 req/s from 1: up by doubling, then bisecting 4..8.
        let (good, bad, tried) = search(5.0, 1.0);
        assert_eq!(tried, [1.0, 2.0, 4.0, 8.0, 6.0, 5.0, 5.5]);
        let (good, bad) = (good.expect("met"), bad.expect("failed"));
        assert!(
            good <= 5.0 && bad > 5.0 && bad <= good * RATE_RESOLUTION,
            "{good} {bad}"
        );
        // Capacity below the start: halving first.
        let (good, _, tried) = search(0.3, 1.0);
        assert_eq!(&tried[..3], [1.0, 0.5, 0.25]);
        assert!(good.is_some_and(|g| g <= 0.3 && g * RATE_RESOLUTION >= 0.3 / RATE_RESOLUTION));
        // Nothing meets the SLO: the search gives up below start / 64.
        let (good, _, tried) = search(0.0, 1.0);
        assert_eq!(good, None);
        assert_eq!(tried.last(), Some(&(1.0 / 64.0)));
    }

    #[test]
    fn slo_needs_p95s_within_bounds_and_no_rejections() {
        let slo = Slo {
            ttft_p95_s: Some(1.0),
            itl_p95_s: Some(0.1),
        };
        let p = |p95| {
            Some(Percentiles {
                p50: p95,
                p95,
                p99: p95,
            })
        };
        let mut l = LevelReport {
            concurrency: 1,
            request_rate: None,
            dropped: None,
            requests: 3,
            errors: 0,
            error_kinds: BTreeMap::new(),
            rejected_429: 0,
            elapsed_s: 1.0,
            requests_per_s: 3.0,
            generated_tokens_per_s: 10.0,
            mean_prompt_tokens: 8.0,
            ttft_s: p(0.5),
            itl_s: p(0.05),
        };
        assert!(slo.met_by(&l));
        l.itl_s = p(0.2);
        assert!(!slo.met_by(&l));
        l.itl_s = p(0.05);
        l.rejected_429 = 1;
        assert!(!slo.met_by(&l));
        l.rejected_429 = 0;
        l.dropped = Some(1);
        assert!(
            !slo.met_by(&l),
            "an open-loop arrival dropped at the in-flight cap"
        );
        l.dropped = Some(0);
        assert!(slo.met_by(&l));
    }

    #[test]
    fn range_ratio_spreads_lengths_evenly_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        assert!((0..100).all(|_| spread(64, 0.0, &mut rng) == 64));
        let draws: Vec<usize> = (0..20_000).map(|_| spread(64, 0.5, &mut rng)).collect();
        assert!(draws.iter().all(|&n| (32..=96).contains(&n)));
        assert_eq!((draws.iter().min(), draws.iter().max()), (Some(&32), Some(&96)));
        let mean = draws.iter().sum::<usize>() as f64 / draws.len() as f64;
        assert!((mean - 64.0).abs() < 0.5, "mean {mean}");
        // Never an empty prompt or zero tokens, whatever the length.
        assert!((0..1000).all(|_| spread(1, 0.9, &mut rng) >= 1));
        assert!((0..1000).all(|_| spread(0, 0.0, &mut rng) == 1));
        for bad in ["1", "1.5", "-0.1", "NaN", "x"] {
            assert!(parse_range_ratio(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_range_ratio("0.25"), Ok(0.25));
    }

    #[test]
    fn poisson_arrivals_have_the_requested_rate() {
        let mut rng = StdRng::seed_from_u64(3);
        let gaps: Vec<f64> = (0..50_000).map(|_| interarrival(4.0, &mut rng)).collect();
        assert!(gaps.iter().all(|g| g.is_finite() && *g >= 0.0));
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.25).abs() < 0.005, "mean gap {mean}");
        // Exponential: the share of gaps longer than the mean is 1/e, not 1/2.
        let long = gaps.iter().filter(|g| **g > 0.25).count() as f64 / gaps.len() as f64;
        assert!((long - (-1f64).exp()).abs() < 0.01, "{long}");
        for bad in ["0", "-1", "inf", "NaN", "x"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("2.5"), Ok(2.5));
    }

    #[test]
    fn loopback_only() {
        assert!(check_loopback("http://127.0.0.1:8000").is_ok());
        assert!(check_loopback("http://localhost:1").is_ok());
        assert!(check_loopback("http://[::1]:1").is_ok());
        assert!(check_loopback("http://example.com").is_err());
        assert!(check_loopback("http://10.0.0.1").is_err());
    }
}
