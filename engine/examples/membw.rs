//! Memory read bandwidth of this machine, for the decode roofline in BENCHMARKS.md.
//!
//! Sums a buffer far larger than the caches (default 1 GiB of u64) with 1 and 2 threads (each thread
//! one contiguous slice), best of N passes, and prints GB/s (10^9 bytes per second) as JSON.
//!
//! `rustc --edition 2024 -C opt-level=3 engine/examples/membw.rs -o membw && ./membw [MIB] [PASSES]`
//! (or `cargo run --release -p bitscale-engine --example membw`, which also builds dev-dependencies).

use std::time::Instant;

fn sum(chunk: &[u64]) -> u64 {
    // Eight independent accumulators so the adds are not one dependency chain; the compiler
    // vectorizes this into wide loads.
    let mut acc = [0u64; 8];
    for c in chunk.chunks_exact(8) {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*x);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

fn pass(buf: &[u64], threads: usize) -> (f64, u64) {
    let t0 = Instant::now();
    let per = buf.len().div_ceil(threads);
    let total = std::thread::scope(|s| {
        let hs: Vec<_> = buf.chunks(per).map(|c| s.spawn(move || sum(c))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(0))
            .fold(0u64, |a, b| a.wrapping_add(b))
    });
    (t0.elapsed().as_secs_f64(), total)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let passes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let n = mib * 1024 * 1024 / 8;
    // Touch every page with distinct values so nothing is a shared zero page.
    let buf: Vec<u64> = (0..n as u64).collect();
    let bytes = (n * 8) as f64;
    let mut out = Vec::new();
    let mut check = 0u64;
    for threads in [1, 2] {
        let mut best = f64::MAX;
        for _ in 0..passes {
            let (secs, s) = pass(&buf, threads);
            check = check.wrapping_add(s);
            best = best.min(secs);
        }
        out.push(format!("\"read_gbps_{threads}t\": {:.2}", bytes / best / 1e9));
    }
    println!(
        "{{\"buffer_mib\": {mib}, \"passes\": {passes}, {}, \"checksum\": {check}}}",
        out.join(", ")
    );
}
