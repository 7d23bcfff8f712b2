//! One container of a pod as a process on this machine: start, exit, probes, back-off, stop.

use std::{
    fs::File,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Container, jiff::Timestamp};
use rustix::process::{Pid, Signal};

use super::{
    invocation::{CannotStart, Invocation},
    probe::{ProbeState, Verdict},
    status::{Record, State, Terminated},
};

/// The kubelet's crash-loop back-off, shortened at the start so tests see restarts in seconds:
/// 1 s, doubling to 5 minutes, reset after 10 minutes of running.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The kubelet's limits on a termination message.
const MESSAGE_BYTES: usize = 4096;
const FALLBACK_LOG_BYTES: usize = 2048;

/// A container's lifecycle within its pod.
#[derive(Debug)]
pub struct Run {
    /// Its spec.
    pub spec: Container,
    /// What the API will show.
    pub record: Record,
    child: Option<Child>,
    since: Option<(Instant, Timestamp)>,
    next_start: Instant,
    backoff: Duration,
    stop_deadline: Option<Instant>,
    stop_reason: Option<&'static str>,
    startup: Option<ProbeState>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    /// stdout and stderr of every run, appended.
    pub log: PathBuf,
    /// The file the process sees at its `terminationMessagePath`.
    pub termination_file: PathBuf,
}

impl Run {
    /// A container not started yet, keeping its files in `dir`.
    pub fn new(spec: &Container, dir: &Path) -> Self {
        Self {
            record: Record::new(&spec.name, spec.image.as_deref().unwrap_or_default()),
            spec: spec.clone(),
            child: None,
            since: None,
            next_start: Instant::now(),
            backoff: FIRST_BACKOFF,
            stop_deadline: None,
            stop_reason: None,
            startup: None,
            readiness: None,
            liveness: None,
            log: dir.join("logs").join(format!("{}.log", spec.name)),
            termination_file: dir.join("termination").join(&spec.name),
        }
    }

    /// The PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is due to (re)start now.
    pub fn due(&self, now: Instant) -> bool {
        self.child.is_none() && now >= self.next_start && matches!(self.record.state, State::Waiting { .. })
    }

    /// Marks it unable to start; tried again after `retry`.
    pub fn cannot_start(&mut self, why: CannotStart, retry: Duration) {
        self.record.state = State::Waiting {
            reason: why.reason.into(),
            message: Some(why.message),
        };
        self.next_start = Instant::now() + retry;
    }

    /// Starts the process.
    pub fn start(&mut self, invocation: &Invocation, cwd: &Path) -> Result<(), CannotStart> {
        let fail = |what: &str, e: std::io::Error| CannotStart {
            reason: "RunContainerError",
            message: format!("{what}: {e}"),
        };
        for dir in [self.log.parent(), self.termination_file.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|e| fail("creating the container's files", e))?;
        }
        // Each run starts with an empty termination message, as in a fresh container.
        let _ = std::fs::remove_file(&self.termination_file);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| fail("opening the log", e))?;
        let err = out.try_clone().map_err(|e| fail("opening the log", e))?;
        let child = Command::new(&invocation.program)
            .args(&invocation.args)
            .env_clear()
            .envs(invocation.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group, so a stop reaches whatever it started.
            .process_group(0)
            .current_dir(cwd)
            .spawn()
            .map_err(|e| fail(&format!("starting {}", invocation.program.display()), e))?;
        let (now, started_at) = (Instant::now(), Timestamp::now());
        let pid = child.id();
        self.child = Some(child);
        self.since = Some((now, started_at));
        self.stop_deadline = None;
        self.stop_reason = None;
        let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref().map(|p| ProbeState::new(p, &self.spec, now))
        };
        self.startup = probe(&self.spec.startup_probe);
        self.readiness = probe(&self.spec.readiness_probe);
        self.liveness = probe(&self.spec.liveness_probe);
        self.record.started = self.startup.is_none();
        self.record.ready = self.readiness.is_none();
        self.record.state = State::Running {
            pid,
            since: started_at,
        };
        Ok(())
    }

    /// Collects the exit of the process, if it ended; `restart` says from the exit code whether
    /// it runs again.
    pub fn poll_exit_with(&mut self, restart: impl Fn(i32) -> bool) -> Option<Terminated> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        let pid = self.child.take().map_or(0, |c| c.id());
        let (ran_since, started) = self.since.take().unwrap_or((Instant::now(), Timestamp::now()));
        let signal = status.signal();
        let exit_code = status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
        let reason = match (self.stop_reason.take(), exit_code) {
            (Some(reason), _) => reason.to_owned(),
            (None, 0) => "Completed".to_owned(),
            (None, _) => "Error".to_owned(),
        };
        let terminated = Terminated {
            pid,
            exit_code,
            signal,
            reason,
            message: self.termination_message(exit_code),
            started,
            finished: Timestamp::now(),
        };
        self.record.ready = false;
        self.record.started = false;
        if restart(exit_code) {
            if ran_since.elapsed() >= BACKOFF_RESET {
                self.backoff = FIRST_BACKOFF;
            }
            self.next_start = Instant::now() + self.backoff;
            self.record.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed container {}",
                    self.backoff.as_secs(),
                    self.spec.name
                )),
            };
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            self.record.last = Some(terminated.clone());
        } else {
            self.record.state = State::Terminated(terminated.clone());
        }
        Some(terminated)
    }

    /// Counts a restart; call before [`Run::start`] of a container that ran before.
    pub fn count_restart(&mut self) {
        if self.record.last.is_some() {
            self.record.restart_count += 1;
        }
    }

    /// Runs the probes that are due. A failed startup or liveness probe stops the process (it is
    /// then restarted as the restart policy says).
    pub async fn probe(&mut self, http: &reqwest::Client, ip: std::net::Ipv4Addr, grace: Duration) {
        if self.child.is_none() || self.stop_deadline.is_some() {
            return;
        }
        let now = Instant::now();
        if let Some(startup) = self.startup.as_mut().filter(|_| !self.record.started) {
            match startup.tick(http, ip, now).await {
                Some(Verdict::Passed) => self.record.started = true,
                Some(Verdict::Failed) => self.stop("StartupProbeFailed", grace),
                None => {}
            }
            return;
        }
        if let Some(readiness) = self.readiness.as_mut()
            && let Some(verdict) = readiness.tick(http, ip, now).await
        {
            self.record.ready = verdict == Verdict::Passed;
        }
        if let Some(liveness) = self.liveness.as_mut()
            && liveness.tick(http, ip, now).await == Some(Verdict::Failed)
        {
            self.stop("LivenessProbeFailed", grace);
        }
    }

    /// Asks the process to stop (SIGTERM to its group); [`Run::enforce`] kills it after `grace`.
    pub fn stop(&mut self, reason: &'static str, grace: Duration) {
        let Some(pid) = self.pid() else { return };
        if self.stop_deadline.is_none() {
            signal_group(pid, Signal::TERM);
            self.stop_deadline = Some(Instant::now() + grace);
            self.stop_reason = Some(reason);
            self.record.ready = false;
        }
    }

    /// SIGKILLs a process that outlived its grace period.
    pub fn enforce(&mut self) {
        if let (Some(pid), Some(deadline)) = (self.pid(), self.stop_deadline)
            && Instant::now() >= deadline
        {
            signal_group(pid, Signal::KILL);
        }
    }

    /// Whether a process runs (or has not been reaped yet).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn termination_message(&self, exit_code: i32) -> Option<String> {
        let written = std::fs::read(&self.termination_file).unwrap_or_default();
        let fallback = self.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        let bytes = if written.is_empty() && fallback && exit_code != 0 {
            let log = std::fs::read(&self.log).unwrap_or_default();
            log[log.len().saturating_sub(FALLBACK_LOG_BYTES)..].to_vec()
        } else {
            written[..written.len().min(MESSAGE_BYTES)].to_vec()
        };
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Signals the process group led by `pid`; a group already gone is not an error.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Some(pgid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pgid, signal);
    }
}
