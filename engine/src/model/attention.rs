//! Per-sequence KV storage, RoPE and causal attention over host buffers.

use half::f16;
use rayon::prelude::*;

use super::kernels::{HeadGroup, append_f16, attend_heads};

/// One sequence's keys and values for every layer, rows appended as positions are written.
///
/// Each layer holds one `Vec` per KV head for K and one for V, `[position][head_dim]`, so
/// appending a token is an amortized O(1) `extend` (no per-token tensor concatenation) and an
/// attention task, which reads one KV head of one sequence, streams contiguous memory: with the
/// heads interleaved per position (`[position][kv_head][head_dim]`), it read 128 of every 384
/// bytes and, at eight sequences of a few hundred positions, ran at half the memory bus's speed.
/// Values are stored as f16, as llama.cpp does by default: half the memory of f32, so a pool holds
/// twice the tokens, and half the bytes attention streams.
pub(crate) struct SeqKv {
    /// Values a position takes in each buffer.
    head_dim: usize,
    /// Per layer, per KV head: (K, V).
    layers: Vec<Vec<(Vec<f16>, Vec<f16>)>>,
}

impl SeqKv {
    /// Bytes one position takes: K and V of every layer, `kv_dim` f16 values each. The loaded
    /// model's `kv_bytes_per_token` and `plan`'s (from a file's header) are both this.
    pub(crate) fn bytes_per_token(layers: usize, kv_dim: usize) -> u64 {
        (layers * 2 * kv_dim * std::mem::size_of::<f16>()) as u64
    }

    /// An empty cache with room for `reserve_positions`, for `dims.kv_heads` heads per layer.
    pub(crate) fn new(layers: usize, dims: AttnDims, reserve_positions: usize) -> Self {
        let cap = dims.head_dim * reserve_positions;
        let head = || (Vec::with_capacity(cap), Vec::with_capacity(cap));
        Self {
            head_dim: dims.head_dim,
            layers: (0..layers)
                .map(|_| (0..dims.kv_heads).map(|_| head()).collect())
                .collect(),
        }
    }

    /// Every K and V buffer.
    fn buffers_mut(&mut self) -> impl Iterator<Item = &mut Vec<f16>> {
        self.layers.iter_mut().flatten().flat_map(|(k, v)| [k, v])
    }

    /// The first `len` positions, in a new cache of exactly that size.
    pub(crate) fn prefix(&self, len: usize) -> Self {
        let copy = |v: &Vec<f16>| v[..(len * self.head_dim).min(v.len())].to_vec();
        Self {
            head_dim: self.head_dim,
            layers: self
                .layers
                .iter()
                .map(|heads| heads.iter().map(|(k, v)| (copy(k), copy(v))).collect())
                .collect(),
        }
    }

    /// Room for `positions` in all, exactly.
    pub(crate) fn reserve(&mut self, positions: usize) {
        let values = positions * self.head_dim;
        for b in self.buffers_mut() {
            b.reserve_exact(values.saturating_sub(b.len()));
        }
    }

    /// Releases spare capacity.
    pub(crate) fn shrink(&mut self) {
        for b in self.buffers_mut() {
            b.shrink_to_fit();
        }
    }

    /// Drops positions at and after `len` (a failed step may have written some layers only).
    pub(crate) fn truncate(&mut self, len: usize) {
        let values = len * self.head_dim;
        for b in self.buffers_mut() {
            b.truncate(values);
        }
    }
}

/// Rotary embedding angles for a set of rows: `cos`/`sin` are `[row][head_dim / 2]`.
pub(crate) struct RopeRows {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    half: usize,
}

impl RopeRows {
    /// Angles for `positions`, with per-pair inverse frequencies `inv_freq` (`head_dim / 2`).
    pub(crate) fn new(positions: &[usize], inv_freq: &[f32]) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                // f64 keeps the angle exact at long positions before the f32 rounding.
                let (s, c) = (p as f64 * f as f64).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Self { cos, sin, half }
    }

    /// Rotates adjacent pairs `(2i, 2i+1)` of every head in `x` (GGUF/llama.cpp layout; HF weights
    /// are permuted to it at load).
    fn apply(&self, row: usize, x: &mut [f32], head_dim: usize) {
        let (c, s) = (
            &self.cos[row * self.half..][..self.half],
            &self.sin[row * self.half..][..self.half],
        );
        for head in x.chunks_exact_mut(head_dim) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * c[i] - x1 * s[i];
                pair[1] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

/// Attention shapes.
#[derive(Clone, Copy)]
pub(crate) struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// One sequence's slice of the step: rows `row0..row0 + rows` of the batch, whose first position
/// is `past` (the positions already cached).
pub(crate) struct SeqRows<'a> {
    pub row0: usize,
    pub rows: usize,
    pub past: usize,
    pub kv: &'a mut SeqKv,
}

/// Applies RoPE to the QKV rows, appends K and V to each sequence's cache for `layer`, and returns
/// the attention output rows (`q_dim` wide). `qkv` rows are `[q | k | v]`.
pub(crate) fn attend(
    qkv: &mut [f32],
    seqs: &mut [SeqRows<'_>],
    layer: usize,
    dims: AttnDims,
    rope: &RopeRows,
) -> Vec<f32> {
    let (qd, kvd, hd) = (dims.q_dim(), dims.kv_dim(), dims.head_dim);
    let width = qd + 2 * kvd;
    let total_rows = qkv.len() / width;
    let mut out = vec![0f32; total_rows * qd];
    let group = dims.heads / dims.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // RoPE and cache appends first (cheap, in order); then every (row, head) attends in parallel.
    let mut owner = Vec::with_capacity(total_rows);
    for (si, seq) in seqs.iter_mut().enumerate() {
        let heads = &mut seq.kv.layers[layer];
        for r in seq.row0..seq.row0 + seq.rows {
            let row = &mut qkv[r * width..(r + 1) * width];
            let (q, kv) = row.split_at_mut(qd);
            rope.apply(r, q, hd);
            rope.apply(r, &mut kv[..kvd], hd);
            let (k, v) = kv.split_at(kvd);
            for ((kc, vc), (k, v)) in heads.iter_mut().zip(k.chunks_exact(hd).zip(v.chunks_exact(hd))) {
                append_f16(kc, k);
                append_f16(vc, v);
            }
            // Causal: row r sees the cache plus this chunk's rows up to itself.
            owner.push((si, seq.past + (r - seq.row0) + 1));
        }
    }
    let caches: Vec<&[(Vec<f16>, Vec<f16>)]> = seqs.iter().map(|s| s.kv.layers[layer].as_slice()).collect();
    let qkv = &*qkv;
    // One task per (row, KV head): the query heads sharing a KV head read its cache together.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each_init(Vec::new, |scores, (at, o)| {
            let (r, kvh) = (at / dims.kv_heads, at % dims.kv_heads);
            let (si, visible) = owner[r];
            let (kc, vc) = &caches[si][kvh];
            let heads = HeadGroup {
                q: &qkv[r * width + kvh * group * hd..][..group * hd],
                k: kc,
                v: vc,
                stride: hd,
                head_dim: hd,
                visible,
                scale,
            };
            attend_heads(&heads, scores, o);
        });
    out
}
