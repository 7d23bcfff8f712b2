//! What the container may use: CPU quota and memory limit from cgroups (v2, then v1), and the
//! parsers for sizes and durations given on the command line.

use std::{path::Path, time::Duration};

/// Memory limits at or above this are "no limit" (cgroup v1 reports a huge number).
const UNLIMITED: u64 = 1 << 60;

/// CPUs the container may use: the cgroup quota rounded up, else the machine's parallelism.
pub fn default_threads() -> usize {
    let avail = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match cpu_quota(Path::new("/sys/fs/cgroup")) {
        Some(q) => (q.ceil() as usize).clamp(1, avail),
        None => avail,
    }
}

/// CPU quota in CPUs from `root` (a cgroup mount), if one is set.
pub fn cpu_quota(root: &Path) -> Option<f64> {
    if let Ok(s) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_cpu_max(&s);
    }
    let quota = std::fs::read_to_string(root.join("cpu/cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(root.join("cpu/cpu.cfs_period_us")).ok()?;
    let (q, p): (i64, i64) = (quota.trim().parse().ok()?, period.trim().parse().ok()?);
    (q > 0 && p > 0).then(|| q as f64 / p as f64)
}

/// Parses cgroup v2 `cpu.max` (`"max 100000"` or `"200000 100000"`).
pub fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

/// The memory the process may use: the cgroup limit, else the machine's total.
pub fn memory_limit() -> Option<u64> {
    let root = Path::new("/sys/fs/cgroup");
    let cg = std::fs::read_to_string(root.join("memory.max"))
        .or_else(|_| std::fs::read_to_string(root.join("memory/memory.limit_in_bytes")))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&n| n < UNLIMITED);
    cg.or_else(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        parse_meminfo_total(&info)
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The default KV pool: the memory limit minus the weights and headroom for everything else
/// (activations, tokenizer, HTTP buffers): a tenth of the limit, at least 512 MiB.
pub fn default_kv_pool(limit: u64, weight_bytes: u64) -> u64 {
    let headroom = (limit / 10).max(512 << 20);
    limit.saturating_sub(weight_bytes).saturating_sub(headroom)
}

/// Splits `512MiB` into `("512", "MiB")`.
fn split_unit(s: &str) -> (&str, &str) {
    s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    )
}

/// Parses a byte size: `1073741824`, `512MiB`, `512Mi`, `2GiB`, `2G` (10^9), `64k`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = split_unit(s);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 2GiB, 512MiB, 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => (1u64 << 20) as f64,
        "g" | "gb" => 1e9,
        "gi" | "gib" => (1u64 << 30) as f64,
        "t" | "tb" => 1e12,
        "ti" | "tib" => (1u64 << 40) as f64,
        u => return Err(format!("unknown size unit `{u}` in `{s}`")),
    };
    Ok((n * mult) as u64)
}

/// Parses a duration: `30s`, `500ms`, `2m`, `1h`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = split_unit(s);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown duration unit `{u}` in `{s}`")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// A duration greater than zero (`--itl-target`: a step cannot be sized to take no time).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err(format!("`{s}` is not a positive duration"))
        } else {
            Ok(d)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_durations_refuse_zero() {
        assert_eq!(parse_positive_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_positive_duration("0.25s"), Ok(Duration::from_millis(250)));
        for bad in ["0ms", "0", "-1s", "fast"] {
            assert!(parse_positive_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_cgroup_files() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("250000 100000\n"), Some(2.5));
        assert_eq!(
            parse_meminfo_total("MemTotal:       16318460 kB\nMemFree: 1 kB"),
            Some(16318460 * 1024)
        );
        assert_eq!(
            default_kv_pool(8 << 30, 2 << 30),
            (8u64 << 30) - (2 << 30) - (8u64 << 30) / 10
        );
        assert_eq!(default_kv_pool(1 << 30, 2 << 30), 0);
    }

    #[test]
    fn parses_sizes_and_durations() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
    }
}
