//! Startup, readiness and liveness probes, with the kubelet's thresholds and periods.
//!
//! `httpGet` and `tcpSocket` probes are run against the pod IP; `exec` and `grpc` probes are not
//! supported and count as passing (neither the operator nor the engine uses them).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

/// A probe and its run-to-run state within one run of a container.
#[derive(Clone, Debug)]
pub struct ProbeState {
    probe: Probe,
    port: Option<u16>,
    next: Instant,
    successes: i32,
    failures: i32,
    /// Whether the probe currently counts as passing (after its thresholds).
    pub passing: bool,
}

/// The outcome of a probe round that changed something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Crossed the success threshold.
    Passed,
    /// Crossed the failure threshold.
    Failed,
}

impl ProbeState {
    /// A probe of `container` that starts `initialDelaySeconds` after `started`.
    pub fn new(probe: &Probe, container: &Container, started: Instant) -> Self {
        let delay = secs(probe.initial_delay_seconds, 0);
        Self {
            port: port(probe, container),
            probe: probe.clone(),
            next: started + delay,
            successes: 0,
            failures: 0,
            passing: false,
        }
    }

    /// Runs the probe if it is due; returns a verdict when a threshold is crossed.
    pub async fn tick(&mut self, http: &reqwest::Client, ip: Ipv4Addr, now: Instant) -> Option<Verdict> {
        if now < self.next {
            return None;
        }
        self.next = now + secs(self.probe.period_seconds, 10);
        let timeout = secs(self.probe.timeout_seconds, 1);
        let ok = self.run(http, ip, timeout).await;
        if ok {
            self.failures = 0;
            self.successes += 1;
            let threshold = self.probe.success_threshold.unwrap_or(1).max(1);
            if !self.passing && self.successes >= threshold {
                self.passing = true;
                return Some(Verdict::Passed);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            let threshold = self.probe.failure_threshold.unwrap_or(3).max(1);
            if self.failures >= threshold {
                // Counted afresh, so a liveness probe restarts a container once per threshold.
                self.failures = 0;
                self.passing = false;
                return Some(Verdict::Failed);
            }
        }
        None
    }

    async fn run(&self, http: &reqwest::Client, ip: Ipv4Addr, timeout: Duration) -> bool {
        if let Some(get) = &self.probe.http_get {
            let Some(port) = self.port else { return false };
            let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
            let path = get.path.as_deref().unwrap_or("/");
            let url = format!("{scheme}://{ip}:{port}{path}");
            return match tokio::time::timeout(timeout, http.get(&url).send()).await {
                Ok(Ok(response)) => {
                    let code = response.status().as_u16();
                    (200..400).contains(&code)
                }
                _ => false,
            };
        }
        if self.probe.tcp_socket.is_some() {
            let Some(port) = self.port else { return false };
            let addr = SocketAddr::from((ip, port));
            return matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            );
        }
        true
    }
}

fn secs(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default)).unwrap_or(0))
}

/// The probe's port: a number, or a named port of the container.
fn port(probe: &Probe, container: &Container) -> Option<u16> {
    let port = probe
        .http_get
        .as_ref()
        .map(|g| &g.port)
        .or(probe.tcp_socket.as_ref().map(|t| &t.port))?;
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))?
                .container_port
        }
    };
    u16::try_from(number).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "engine",
            "ports": [{ "name": "http", "containerPort": 8000 }],
        }))
        .expect("container")
    }

    fn probe(extra: serde_json::Value) -> Probe {
        let mut p = serde_json::json!({ "httpGet": { "path": "/ready", "port": "http" } });
        p.as_object_mut()
            .expect("object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        serde_json::from_value(p).expect("probe")
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        assert_eq!(port(&probe(serde_json::json!({})), &container()), Some(8000));
        let numbered = serde_json::from_value(serde_json::json!({ "tcpSocket": { "port": 9 } })).expect("p");
        assert_eq!(port(&numbered, &container()), Some(9));
        let unknown =
            serde_json::from_value(serde_json::json!({ "httpGet": { "port": "nope" } })).expect("p");
        assert_eq!(port(&unknown, &container()), None);
    }

    #[tokio::test]
    async fn thresholds_decide_when_a_probe_passes_and_fails() {
        // Nothing listens on this port of this loopback address.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let free = listener.local_addr().expect("addr").port();
        drop(listener);
        let p: Probe = serde_json::from_value(serde_json::json!({
            "tcpSocket": { "port": free }, "periodSeconds": 1, "failureThreshold": 2
        }))
        .expect("probe");
        let http = reqwest::Client::new();
        let start = Instant::now();
        let mut state = ProbeState::new(&p, &container(), start);
        let ip = Ipv4Addr::LOCALHOST;
        assert_eq!(state.tick(&http, ip, start).await, None, "one failure of two");
        assert_eq!(state.tick(&http, ip, start).await, None, "not due again yet");
        let later = start + Duration::from_secs(1);
        assert_eq!(state.tick(&http, ip, later).await, Some(Verdict::Failed));

        let up = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p: Probe = serde_json::from_value(serde_json::json!({
            "tcpSocket": { "port": up.local_addr().expect("addr").port() }
        }))
        .expect("probe");
        let mut state = ProbeState::new(&p, &container(), start);
        assert_eq!(state.tick(&http, ip, start).await, Some(Verdict::Passed));
        assert!(state.passing);
    }
}
