//! Prints the greedy chat answer and first-step top logits of a model at a level, and times decode
//! in wall time and in CPU time (the latter stays meaningful on a busy machine: run it with
//! `RAYON_NUM_THREADS=1` to get one core's decode rate).
//! Usage: model_probe PATH LEVEL [BATCH] [STEPS] [QUESTION]

use std::time::Instant;

use bitscale_engine::model::{ChatMessage, DeviceKind, KvCache, SeqChunk, load};

fn argmax(l: &[f32]) -> u32 {
    l.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > l[b] { i } else { b }) as u32
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`; 0 elsewhere.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let level = args[2].parse()?;
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let m = load(args[1].as_ref(), level, DeviceKind::Cpu)?;
    let info = m.forward.info();
    println!(
        "{} {} weights {} MB, kv {} B/token",
        info.name,
        info.quantization,
        info.weight_bytes / 1_000_000,
        info.kv_bytes_per_token
    );
    let prompt = m.tokenizer.apply_chat_template(&[ChatMessage {
        role: "user".into(),
        content: args
            .get(5)
            .cloned()
            .unwrap_or_else(|| "What is the capital of France?".into()),
    }])?;
    let ids = m.tokenizer.encode(&prompt, false)?;
    println!("prompt ids {ids:?}");
    let mut caches: Vec<KvCache> = (0..batch).map(|_| m.forward.new_cache()).collect();
    let mut chunks: Vec<SeqChunk<'_>> = caches
        .iter_mut()
        .map(|c| SeqChunk {
            tokens: &ids,
            cache: c,
            want_logits: true,
        })
        .collect();
    let logits = m.forward.forward(&mut chunks)?;
    drop(chunks);
    let first = logits[0].clone().expect("logits");
    let mut top: Vec<(usize, f32)> = first.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (id, v) in &top[..5] {
        println!("  {id} {:?} {v:.3}", m.tokenizer.decode(&[*id as u32])?);
    }
    let mut next: Vec<u32> = logits.iter().map(|l| argmax(l.as_ref().expect("l"))).collect();
    let mut out = vec![next[0]];
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(48);
    let t = Instant::now();
    let cpu0 = cpu_secs();
    for _ in 0..steps {
        let toks: Vec<[u32; 1]> = next.iter().map(|&n| [n]).collect();
        let mut chunks: Vec<SeqChunk<'_>> = caches
            .iter_mut()
            .zip(&toks)
            .map(|(c, t)| SeqChunk {
                tokens: t,
                cache: c,
                want_logits: true,
            })
            .collect();
        let logits = m.forward.forward(&mut chunks)?;
        next = logits.iter().map(|l| argmax(l.as_ref().expect("l"))).collect();
        out.push(next[0]);
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    println!("answer: {:?}", m.tokenizer.decode(&out)?);
    println!(
        "batch {batch}: {:.1} tok/s aggregate ({:.1} ms/step), {:.1} tok per CPU-second",
        (steps * batch) as f64 / secs,
        secs * 1e3 / steps as f64,
        (steps * batch) as f64 / cpu
    );
    Ok(())
}
