//! A pod's status as the runner reports it, built from what its containers' processes did. Pure:
//! the records come from [`super::pod`], the result goes to the `pods/status` subresource.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

/// The scheme of the container IDs the runner reports: `bitscale-e2e://<pid>`.
pub const CONTAINER_ID_SCHEME: &str = "bitscale-e2e";

/// How a container process ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    /// The process's PID while it ran.
    pub pid: u32,
    /// Its exit code (128 + the signal when a signal ended it).
    pub exit_code: i32,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, or why the runner ended it.
    pub reason: String,
    /// The termination message.
    pub message: Option<String>,
    /// When it started.
    pub started: Timestamp,
    /// When it ended.
    pub finished: Timestamp,
}

/// The current state of one container.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Not running: not started yet, in back-off, or unable to start.
    Waiting {
        /// Kubelet-style reason.
        reason: String,
        /// Details.
        message: Option<String>,
    },
    /// Running as `pid` since `since`.
    Running {
        /// The process.
        pid: u32,
        /// When it started.
        since: Timestamp,
    },
    /// Ended and not (yet) restarted.
    Terminated(Terminated),
}

/// What the runner knows of one container.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Container name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// The current state.
    pub state: State,
    /// The previous run, after a restart.
    pub last: Option<Terminated>,
    /// How often it was restarted.
    pub restart_count: i32,
    /// Its startup probe passed (or it has none) in this run.
    pub started: bool,
    /// Its readiness probe passes (or it has none) in this run.
    pub ready: bool,
}

impl Record {
    /// A container that has not started.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            restart_count: 0,
            started: false,
            ready: false,
        }
    }

    /// Running, and its readiness probe passes (or it has none).
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Running { .. }) && self.ready
    }

    /// The container's status as the API shows it.
    pub fn status(&self) -> ContainerStatus {
        let running = matches!(self.state, State::Running { .. });
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: match &self.state {
                State::Running { pid, .. } | State::Terminated(Terminated { pid, .. }) => {
                    Some(format!("{CONTAINER_ID_SCHEME}://{pid}"))
                }
                State::Waiting { .. } => None,
            },
            ready: self.is_ready(),
            started: Some(running && self.started),
            restart_count: self.restart_count,
            state: Some(state(&self.state)),
            last_state: self.last.as_ref().map(|t| ContainerState {
                terminated: Some(terminated(t)),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }
}

fn state(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { since, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*since)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..ContainerState::default()
        },
    }
}

fn terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        container_id: Some(format!("{CONTAINER_ID_SCHEME}://{}", t.pid)),
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started)),
        finished_at: Some(Time(t.finished)),
    }
}

/// The pod's lifecycle phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Init containers running, or no container started yet.
    Pending,
    /// A container runs or will be restarted.
    Running,
    /// Every container exited 0 and none restarts.
    Succeeded,
    /// Every container exited, one of them non-zero, and none restarts.
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// The phase of a pod whose init containers are done (`initialized`) and whose containers are
/// `main`; `finished` is true once no container will run again.
pub fn phase(initialized: bool, init_failed: bool, main: &[Record], finished: bool) -> Phase {
    if init_failed {
        return Phase::Failed;
    }
    if !initialized {
        return Phase::Pending;
    }
    if finished {
        let all_ok = main
            .iter()
            .all(|r| matches!(&r.state, State::Terminated(t) if t.exit_code == 0));
        return if all_ok { Phase::Succeeded } else { Phase::Failed };
    }
    let ever_ran = main
        .iter()
        .any(|r| !matches!(r.state, State::Waiting { .. }) || r.restart_count > 0);
    if ever_ran { Phase::Running } else { Phase::Pending }
}

/// Condition statuses are kept with the time each last changed.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    since: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl Conditions {
    /// The conditions for these truths, with `lastTransitionTime` moved only where one changed.
    pub fn update(&mut self, now: Timestamp, truths: &[(&'static str, bool)]) -> Vec<PodCondition> {
        truths
            .iter()
            .map(|&(type_, value)| {
                let entry = self.since.entry(type_).or_insert((value, now));
                if entry.0 != value {
                    *entry = (value, now);
                }
                PodCondition {
                    type_: type_.to_owned(),
                    status: if value { "True" } else { "False" }.to_owned(),
                    last_transition_time: Some(Time(entry.1)),
                    ..PodCondition::default()
                }
            })
            .collect()
    }
}

/// Everything the runner reports for a pod.
pub struct PodReport<'a> {
    /// The pod IP.
    pub ip: Option<std::net::Ipv4Addr>,
    /// When the runner took the pod.
    pub start_time: Timestamp,
    /// The phase.
    pub phase: Phase,
    /// Init containers done.
    pub initialized: bool,
    /// Init containers, in order.
    pub init: &'a [Record],
    /// Containers.
    pub main: &'a [Record],
}

/// The pod status: phase, conditions, IPs and container statuses.
pub fn pod_status(report: &PodReport<'_>, conditions: &mut Conditions, now: Timestamp) -> PodStatus {
    let ready = report.phase == Phase::Running && report.main.iter().all(Record::is_ready);
    let conditions = conditions.update(
        now,
        &[
            ("PodScheduled", true),
            ("PodReadyToStartContainers", report.ip.is_some()),
            ("Initialized", report.initialized),
            ("ContainersReady", ready),
            ("Ready", ready),
        ],
    );
    let ip = report.ip.map(|ip| ip.to_string());
    PodStatus {
        phase: Some(report.phase.as_str().to_owned()),
        conditions: Some(conditions),
        host_ip: Some("127.0.0.1".into()),
        host_ips: Some(vec![HostIP {
            ip: "127.0.0.1".into(),
        }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        start_time: Some(Time(report.start_time)),
        init_container_statuses: (!report.init.is_empty())
            .then(|| report.init.iter().map(Record::status).collect()),
        container_statuses: Some(report.main.iter().map(Record::status).collect()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: i32) -> Terminated {
        Terminated {
            pid: 42,
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: Some("done".into()),
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
        }
    }

    fn record(state: State, ready: bool) -> Record {
        Record {
            state,
            ready,
            started: true,
            ..Record::new("engine", "bitscale-engine:test")
        }
    }

    #[test]
    fn phases_follow_the_containers() {
        let running = record(
            State::Running {
                pid: 7,
                since: Timestamp::UNIX_EPOCH,
            },
            true,
        );
        let waiting = Record::new("engine", "x");
        assert_eq!(
            phase(false, false, std::slice::from_ref(&running), false),
            Phase::Pending
        );
        assert_eq!(phase(true, true, &[], false), Phase::Failed);
        assert_eq!(
            phase(true, false, std::slice::from_ref(&waiting), false),
            Phase::Pending
        );
        assert_eq!(phase(true, false, &[running], false), Phase::Running);
        let crashed = Record {
            restart_count: 1,
            ..waiting
        };
        assert_eq!(
            phase(true, false, &[crashed], false),
            Phase::Running,
            "in back-off"
        );
        let done = record(State::Terminated(ended(0)), false);
        let failed = record(State::Terminated(ended(3)), false);
        assert_eq!(
            phase(true, false, std::slice::from_ref(&done), true),
            Phase::Succeeded
        );
        assert_eq!(phase(true, false, &[done, failed], true), Phase::Failed);
    }

    #[test]
    fn a_terminated_container_reports_its_exit_code_message_and_id() {
        let mut r = record(State::Terminated(ended(3)), true);
        r.restart_count = 2;
        r.last = Some(ended(1));
        let s = r.status();
        assert!(!s.ready, "a terminated container is never ready");
        assert_eq!(s.restart_count, 2);
        assert_eq!(s.container_id.as_deref(), Some("bitscale-e2e://42"));
        let t = s.state.and_then(|s| s.terminated).expect("terminated");
        assert_eq!((t.exit_code, t.message.as_deref()), (3, Some("done")));
        assert_eq!(
            s.last_state.and_then(|s| s.terminated).map(|t| t.exit_code),
            Some(1)
        );
    }

    #[test]
    fn ready_needs_every_container_ready_and_transition_times_move_only_on_change() {
        let ready = record(
            State::Running {
                pid: 1,
                since: Timestamp::UNIX_EPOCH,
            },
            true,
        );
        let unready = Record {
            ready: false,
            ..ready.clone()
        };
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(60).expect("time");
        let mut conditions = Conditions::default();
        let status = |main: &[Record], conditions: &mut Conditions, now| {
            let r = PodReport {
                ip: Some(std::net::Ipv4Addr::new(127, 2, 0, 1)),
                start_time: t0,
                phase: Phase::Running,
                initialized: true,
                init: &[],
                main,
            };
            pod_status(&r, conditions, now)
        };
        let ready_of = |s: &PodStatus| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status.clone(), c.last_transition_time.clone()))
                .expect("Ready")
        };
        let first = status(&[ready.clone(), unready.clone()], &mut conditions, t0);
        assert_eq!(ready_of(&first), ("False".into(), Some(Time(t0))));
        assert_eq!(first.pod_ip.as_deref(), Some("127.2.0.1"));
        let same = status(&[ready.clone(), unready], &mut conditions, t1);
        assert_eq!(ready_of(&same), ("False".into(), Some(Time(t0))));
        let now_ready = status(&[ready.clone(), ready], &mut conditions, t1);
        assert_eq!(ready_of(&now_ready), ("True".into(), Some(Time(t1))));
    }
}
