//! How a container becomes a process on this machine: which binary, which arguments, which
//! environment. Pure: everything the pod's volumes, IP and limits contribute arrives resolved in a
//! [`PodContext`], so the rules below are unit-tested without a cluster.
//!
//! A process here has no mount or network namespace of its own, so the runner translates what a
//! container would see into what this machine has:
//! - a path under a volume's `mountPath` (or the `terminationMessagePath`) in an argument or an
//!   environment value becomes the path of that volume's directory on this machine;
//! - `0.0.0.0`, "every address of the pod", becomes the pod IP (a loopback address), so replicas
//!   of one port do not collide; a process that binds 127.0.0.1 shares this machine's loopback;
//! - `--device cuda` becomes `--device cpu` for the engine: the GPU nodes are emulated and this
//!   machine has none, so a GPU variant's process is real but computes on the CPU;
//! - `BITSCALE_THREADS` is set from the CPU limit (what the engine reads from its cgroup in a
//!   real pod) unless the container sets it.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar};

use super::images::{Program, program_for};

/// What the pod contributes to each of its containers' processes.
#[derive(Clone, Debug, Default)]
pub struct PodContext {
    /// The pod IP.
    pub ip: Option<Ipv4Addr>,
    /// Container path → directory on this machine, for every mounted volume of the container.
    pub mounts: Vec<(String, PathBuf)>,
    /// Environment values resolved from `valueFrom` (field, resource, ConfigMap and Secret refs),
    /// by variable name; missing ones fail the container.
    pub resolved_env: BTreeMap<String, String>,
    /// Extra environment the runner adds (HOME, KUBECONFIG, the teardown marker).
    pub runner_env: Vec<(String, String)>,
    /// Where the workspace's binaries are.
    pub bin_dir: PathBuf,
}

/// A process to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
}

/// Why a container cannot start; shown as its waiting reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CannotStart {
    /// A kubelet-style reason (`ErrImageNeverPull`, `CreateContainerConfigError`, …).
    pub reason: &'static str,
    /// What to do about it.
    pub message: String,
}

/// The process for `container`, or why there is none.
pub fn invocation(container: &Container, ctx: &PodContext) -> Result<Invocation, CannotStart> {
    let image = container.image.as_deref().unwrap_or_default();
    let program = program_for(image).ok_or_else(|| CannotStart {
        reason: "ErrImageNeverPull",
        message: format!("the pod runner runs only the workspace's binaries, not image {image}"),
    })?;
    let binary = ctx.bin_dir.join(program.binary());
    if !binary.is_file() {
        return Err(CannotStart {
            reason: "ErrImageNeverPull",
            message: format!(
                "{} is not built: run `cargo build -p {}`",
                binary.display(),
                program.binary()
            ),
        });
    }
    let env = environment(container, ctx)?;
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut args = command_args(container, program)?
        .into_iter()
        .map(|a| translate(&expand(&a, &lookup), ctx))
        .collect::<Vec<_>>();
    if program == Program::Engine {
        emulate_gpu_on_cpu(&mut args);
    }
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            let v = translate(&v, ctx);
            (k, v)
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "BITSCALE_THREADS") {
        env.push(("BITSCALE_THREADS".into(), cpu_threads(container).to_string()));
    }
    env.extend(ctx.runner_env.iter().cloned());
    Ok(Invocation {
        program: binary,
        args,
        env,
    })
}

/// `command` + `args` with the image's entrypoint standing in for the binary's own name.
fn command_args(container: &Container, program: Program) -> Result<Vec<String>, CannotStart> {
    let args = container.args.clone();
    match container.command.as_deref() {
        None | Some([]) => {
            Ok(args.unwrap_or_else(|| program.default_args().iter().map(|s| (*s).to_owned()).collect()))
        }
        Some([first, rest @ ..]) if first.rsplit('/').next() == Some(program.binary()) => {
            Ok(rest.iter().cloned().chain(args.unwrap_or_default()).collect())
        }
        Some([first, ..]) => Err(CannotStart {
            reason: "RunContainerError",
            message: format!(
                "command {first} is not in the image: only {} runs here",
                program.binary()
            ),
        }),
    }
}

/// The container's `env`, in order, with `valueFrom` taken from the context. `envFrom` is not
/// supported: the charts and the operator do not use it, and a silent gap would mislead.
fn environment(container: &Container, ctx: &PodContext) -> Result<Vec<(String, String)>, CannotStart> {
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(CannotStart {
            reason: "CreateContainerConfigError",
            message: "envFrom is not supported by the local pod runner".into(),
        });
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let value = match (value, value_from) {
            (_, Some(_)) => ctx.resolved_env.get(name).cloned().ok_or_else(|| CannotStart {
                reason: "CreateContainerConfigError",
                message: format!("cannot resolve the value of environment variable {name}"),
            })?,
            (Some(v), None) => {
                let earlier: BTreeMap<&str, &str> =
                    out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(v, &earlier)
            }
            (None, None) => String::new(),
        };
        out.retain(|(k, _)| k != name);
        out.push((name.clone(), value));
    }
    Ok(out)
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` escapes, anything else
/// stays as written.
pub fn expand(value: &str, env: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(name) = tail.strip_prefix("$(").and_then(|t| t.split_once(')'))
            && let Some(v) = env.get(name.0)
        {
            out.push_str(v);
            rest = name.1;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A value as the process on this machine must see it: container paths to host paths, the
/// unspecified address to the pod IP. `--flag=value` is translated on its value.
pub fn translate(value: &str, ctx: &PodContext) -> String {
    if let Some((flag, rhs)) = value.split_once('=')
        && flag.starts_with('-')
    {
        return format!("{flag}={}", translate(rhs, ctx));
    }
    let mut value = value.to_owned();
    if let Some(ip) = ctx.ip {
        value = value.replace("0.0.0.0", &ip.to_string());
    }
    // The longest mount path wins (a volume mounted inside another).
    let mut mounts: Vec<&(String, PathBuf)> = ctx.mounts.iter().collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    for (path, host) in mounts {
        let path = path.trim_end_matches('/');
        if value == path {
            return host.to_string_lossy().into_owned();
        }
        if let Some(rest) = value.strip_prefix(path)
            && rest.starts_with('/')
        {
            return format!("{}{rest}", host.to_string_lossy());
        }
    }
    value
}

fn emulate_gpu_on_cpu(args: &mut [String]) {
    for i in 0..args.len() {
        if args[i] == "--device=cuda" {
            args[i] = "--device=cpu".into();
        } else if args[i] == "--device" && args.get(i + 1).is_some_and(|a| a == "cuda") {
            args[i + 1] = "cpu".into();
        }
    }
}

/// Whole CPUs of the container's CPU limit (else its request), rounded up; 1 when neither is set.
pub fn cpu_threads(container: &Container) -> u32 {
    let resources = container.resources.as_ref();
    let quantity = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("cpu"))
        .or_else(|| {
            resources
                .and_then(|r| r.requests.as_ref())
                .and_then(|l| l.get("cpu"))
        });
    let Some(quantity) = quantity else { return 1 };
    let q = quantity.0.trim();
    let cores = match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => q.parse::<f64>(),
    };
    cores.map_or(1, |c| (c.ceil() as u32).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(bin_dir: PathBuf) -> PodContext {
        PodContext {
            ip: Some(Ipv4Addr::new(127, 2, 0, 7)),
            mounts: vec![
                ("/models".into(), PathBuf::from("/srv/pv/models")),
                ("/tmp".into(), PathBuf::from("/state/pods/p/volumes/tmp")),
                (
                    "/dev/termination-log".into(),
                    PathBuf::from("/state/pods/p/termination/engine"),
                ),
            ],
            resolved_env: BTreeMap::from([("POD_NAME".to_owned(), "smol-abc".to_owned())]),
            runner_env: vec![("HOME".into(), "/state/pods/p/home".into())],
            bin_dir,
        }
    }

    fn engine(args: &[&str]) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "engine",
            "image": "ghcr.io/bitscale-dev/bitscale-engine:0.1.0",
            "args": args,
            "env": [
                { "name": "RUST_LOG", "value": "info" },
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "GREETING", "value": "hi $(POD_NAME) $$(POD_NAME) $(NOPE)" },
            ],
            "resources": { "limits": { "cpu": "1500m", "memory": "1Gi" } },
        }))
        .expect("container")
    }

    fn bin_dir_with(binaries: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for b in binaries {
            std::fs::write(dir.path().join(b), "").expect("write");
        }
        dir
    }

    #[test]
    fn an_engine_container_runs_the_workspace_binary_with_host_paths_and_the_pod_ip() {
        let bins = bin_dir_with(&["bitscale-engine"]);
        let ctx = context(bins.path().to_owned());
        let container = engine(&[
            "serve",
            "--model",
            "/models/smol.gguf",
            "--host",
            "0.0.0.0",
            "--device",
            "cuda",
            "--out=/dev/termination-log",
            "--name=$(POD_NAME)",
        ]);
        let run = invocation(&container, &ctx).expect("runs");
        assert_eq!(run.program, bins.path().join("bitscale-engine"));
        assert_eq!(
            run.args,
            [
                "serve",
                "--model",
                "/srv/pv/models/smol.gguf",
                "--host",
                "127.2.0.7",
                "--device",
                "cpu",
                "--out=/state/pods/p/termination/engine",
                "--name=smol-abc",
            ]
        );
        let env: BTreeMap<_, _> = run.env.iter().cloned().collect();
        assert_eq!(env["POD_NAME"], "smol-abc");
        assert_eq!(env["GREETING"], "hi smol-abc $(POD_NAME) $(NOPE)");
        assert_eq!(env["BITSCALE_THREADS"], "2", "1500m rounds up");
        assert_eq!(env["HOME"], "/state/pods/p/home");
    }

    #[test]
    fn unknown_images_missing_binaries_and_foreign_commands_do_not_start() {
        let bins = bin_dir_with(&[]);
        let ctx = context(bins.path().to_owned());
        let missing = invocation(&engine(&["serve"]), &ctx).expect_err("not built");
        assert_eq!(missing.reason, "ErrImageNeverPull");
        assert!(missing.message.contains("cargo build -p bitscale-engine"));

        let bins = bin_dir_with(&["bitscale-engine"]);
        let ctx = context(bins.path().to_owned());
        let mut pause = engine(&[]);
        pause.image = Some("registry.k8s.io/pause:3.10".into());
        assert_eq!(
            invocation(&pause, &ctx).expect_err("foreign").reason,
            "ErrImageNeverPull"
        );
        let mut shell = engine(&[]);
        shell.command = Some(vec!["/bin/sh".into(), "-c".into()]);
        assert_eq!(
            invocation(&shell, &ctx).expect_err("sh").reason,
            "RunContainerError"
        );
        let mut own = engine(&["--help"]);
        own.command = Some(vec!["/usr/local/bin/bitscale-engine".into(), "serve".into()]);
        assert_eq!(
            invocation(&own, &ctx).expect("own binary").args,
            ["serve", "--help"]
        );
        let no_args = Container {
            args: None,
            ..engine(&[])
        };
        assert_eq!(invocation(&no_args, &ctx).expect("CMD").args, ["serve", "--help"]);
    }

    #[test]
    fn an_unresolved_value_from_fails_the_container() {
        let bins = bin_dir_with(&["bitscale-engine"]);
        let mut ctx = context(bins.path().to_owned());
        ctx.resolved_env.clear();
        let err = invocation(&engine(&["serve"]), &ctx).expect_err("unresolved");
        assert_eq!(err.reason, "CreateContainerConfigError");
        assert!(err.message.contains("POD_NAME"));
    }

    #[test]
    fn paths_translate_only_on_component_boundaries() {
        let ctx = context(PathBuf::new());
        assert_eq!(translate("/models", &ctx), "/srv/pv/models");
        assert_eq!(translate("/modelsx/a", &ctx), "/modelsx/a");
        assert_eq!(translate("/tmp/x", &ctx), "/state/pods/p/volumes/tmp/x");
        assert_eq!(
            translate("--metrics-addr=0.0.0.0:8080", &ctx),
            "--metrics-addr=127.2.0.7:8080"
        );
        assert_eq!(translate("a=b", &ctx), "a=b");
    }

    #[test]
    fn threads_follow_the_cpu_limit_then_the_request() {
        let with = |resources: serde_json::Value| -> Container {
            serde_json::from_value(serde_json::json!({ "name": "c", "resources": resources })).expect("c")
        };
        assert_eq!(
            cpu_threads(&with(serde_json::json!({ "limits": { "cpu": "4" } }))),
            4
        );
        assert_eq!(
            cpu_threads(&with(serde_json::json!({ "requests": { "cpu": "250m" } }))),
            1
        );
        assert_eq!(cpu_threads(&with(serde_json::json!({}))), 1);
    }
}
