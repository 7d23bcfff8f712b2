//! Daemonized control-plane processes: start detached, remember by PID file, stop by PID.
//!
//! A PID file alone is not proof: after a crash or reboot the PID may belong to someone else. A
//! PID counts as ours only if `/proc/<pid>/cmdline` starts with the binary we started and mentions
//! the cluster's state directory, which every component's flags do.

use std::{
    ffi::OsString,
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal};

use crate::Error;

/// A started (or found) control-plane process.
#[derive(Clone, Debug)]
pub struct Daemon {
    /// Component name, e.g. `kube-apiserver`; names the PID and log files.
    pub name: &'static str,
    /// The binary.
    pub program: PathBuf,
    /// Its PID.
    pub pid: u32,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// Starts `program` detached from the caller: its own process group (a Ctrl-C in the terminal
/// that ran `up` does not reach it), stdin closed, stdout and stderr appended to
/// `<state>/logs/<name>.log`, and its PID written to `<state>/pids/<name>.pid`.
pub fn spawn(
    state_dir: &Path,
    name: &'static str,
    program: &Path,
    args: &[OsString],
    envs: &[(&str, &Path)],
) -> Result<Daemon, Error> {
    let logs = state_dir.join("logs");
    let pids = state_dir.join("pids");
    for dir in [&logs, &pids] {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let log = logs.join(format!("{name}.log"));
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(Error::io("opening", &log))?;
    let err = out.try_clone().map_err(Error::io("opening", &log))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .current_dir(state_dir);
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.spawn().map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let pid = child.id();
    // The child is deliberately not waited for: it outlives this process and is stopped by PID.
    drop(child);
    let pid_file = pid_file(state_dir, name);
    std::fs::write(&pid_file, format!("{pid}\n")).map_err(Error::io("writing", &pid_file))?;
    Ok(Daemon {
        name,
        program: program.to_owned(),
        pid,
        log,
    })
}

fn pid_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("pids").join(format!("{name}.pid"))
}

/// The process recorded for `name` in the state directory, if its PID file exists and the PID
/// is still running `program` for this cluster.
pub fn find(state_dir: &Path, name: &'static str, program: &Path) -> Option<Daemon> {
    let text = std::fs::read_to_string(pid_file(state_dir, name)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    is_ours(pid, program, state_dir).then(|| Daemon {
        name,
        program: program.to_owned(),
        pid,
        log: state_dir.join("logs").join(format!("{name}.log")),
    })
}

/// Every PID file in the state directory whose process is still ours, whatever its binary.
///
/// Used by teardown, which must also stop processes of a binary version no longer current.
pub fn find_all(state_dir: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("pids")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(argv) = cmdline(pid)
            && argv
                .iter()
                .any(|arg| arg.contains(state_dir.to_string_lossy().as_ref()))
            && is_running(pid)
        {
            found.push((name, pid));
        }
    }
    found
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` runs `program` with an argument naming `state_dir`, and has not exited.
pub fn is_ours(pid: u32, program: &Path, state_dir: &Path) -> bool {
    let Some(argv) = cmdline(pid) else {
        return false;
    };
    let state = state_dir.to_string_lossy();
    argv.first().is_some_and(|a| Path::new(a) == program)
        && argv.iter().any(|a| a.contains(state.as_ref()))
        && is_running(pid)
}

/// False once the process is gone or a zombie (exited, not yet reaped by its parent).
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name, which may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Sends SIGTERM, waits up to `grace` for the process to go, then SIGKILLs it.
pub fn stop(name: &str, pid: u32, grace: Duration) {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if rustix::process::kill_process(target, Signal::TERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while is_running(pid) {
        if Instant::now() >= deadline {
            eprintln!("bitscale-e2e: {name} (pid {pid}) ignored SIGTERM for {grace:?}; sending SIGKILL");
            // It may exit between the check and the signal; either way it goes.
            let _ = rustix::process::kill_process(target, Signal::KILL);
            let killed = Instant::now();
            // SIGKILL cannot be ignored; wait briefly so its files are closed before they are removed.
            while is_running(pid) && killed.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn until_terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Every running process whose environment holds `key=value`: how teardown finds the pod
/// runner's processes, whose PIDs no file records once the runner is gone.
pub fn find_by_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == needle.as_bytes()))
        })
        .filter(|pid| is_running(*pid))
        .collect()
}
