//! K-quants (Q4_K, Q5_K, Q6_K): packing at load, Q8_K activations, and the plain-Rust kernel that
//! is the reference for the AVX2 one.
//!
//! A K-quant super-block holds 256 values with one f16 scale `d` (and, for Q4_K/Q5_K, one f16
//! `dmin`) plus 6-bit (Q4_K/Q5_K, per 32 values) or 8-bit (Q6_K, per 16 values) sub-scales. The
//! arithmetic is llama.cpp's (`ggml_vec_dot_q{4,5,6}_K_q8_K`): activations become Q8_K (one f32
//! scale `dx` per 256 values, sums of every 16 quants in `bsums`) and, per super-block,
//! - Q4_K / Q5_K (`w = d·sc·q − dmin·m`, q unsigned): `d·dx·Σ sc·(q·x) − dmin·dx·Σ m·bsum32`;
//! - Q6_K (`w = d·sc·(q − 32)`): `d·dx·(Σ sc·(q·x) − 32·Σ sc·bsum16)`.
//!
//! Both sums are exact integers per (row, super-block), so the SIMD and portable kernels, and a
//! row alone or in a batch, agree bit for bit as long as the float accumulation runs in the same
//! order (super-block by super-block, with fused multiply-adds).
//!
//! Packed layout per row (super-block `s` at offset `s·QS`): `qs` holds the quants as GGUF does
//! (Q4_K: 128 bytes of nibble pairs; Q5_K: those then the 32 bytes of fifth bits; Q6_K: 128 bytes
//! of low nibbles then 64 of high bit pairs); `sc` holds 16 bytes of unpacked sub-scales per
//! super-block (Q4_K/Q5_K: 8 scales then 8 minimums, u8; Q6_K: 16 i8 scales); `d` and `mn` hold
//! `d` and `dmin` as f16 bits, one per super-block. Q4_K and Q5_K grow by 4 bytes per super-block
//! over GGUF (144 → 148, 176 → 180); Q6_K keeps its 210.

use half::f16;

use super::{Format, PackedMatrix};

/// Values per K-quant super-block.
pub(crate) const QK: usize = 256;

/// Bytes of `qs` per super-block.
pub(super) fn qs_bytes(format: Format) -> usize {
    match format {
        Format::Q4K => QK / 2,
        Format::Q5K => QK / 2 + QK / 8,
        _ => QK / 2 + QK / 4,
    }
}

/// `m` activation rows quantized to Q8_K super-blocks.
pub(crate) struct QuantActsK {
    /// `m × k` quants in `-128..=127`.
    pub qs: Vec<i8>,
    /// One scale per super-block, `m × k/256`.
    pub d: Vec<f32>,
    /// Sums of each 16 consecutive quants, `m × k/16`.
    pub bsums: Vec<i16>,
    /// `d` for each full group of 8 rows, `[group][super-block][row]`, so a kernel loads the
    /// 8 rows' scales of one super-block as one vector.
    pub d8: Vec<f32>,
}

/// llama.cpp's `nearest_int`: round half to even through the float adder (exact for |v| < 2²²,
/// and the same on every CPU, so the SIMD and portable paths see the same quants).
fn nearest_int(v: f32) -> i32 {
    let f = v + 12_582_912.0;
    (f.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

impl QuantActsK {
    /// Quantizes rows of `k` values (`k` a multiple of 256) as llama.cpp's `quantize_row_q8_K`:
    /// the value of largest magnitude maps to −128, `dx = 1 / (−128 / max)`.
    pub(crate) fn new(x: &[f32], k: usize) -> Self {
        debug_assert!(k.is_multiple_of(QK));
        let (nsb, m) = (k / QK, x.len() / k);
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; m * nsb];
        let mut bsums = vec![0i16; x.len() / 16];
        for (((src, dst), dx), bs) in x
            .chunks_exact(QK)
            .zip(qs.chunks_exact_mut(QK))
            .zip(d.iter_mut())
            .zip(bsums.chunks_exact_mut(QK / 16))
        {
            let max = src
                .iter()
                .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
            if max == 0.0 {
                continue;
            }
            let iscale = -128.0 / max;
            for (q, &v) in dst.iter_mut().zip(src) {
                *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
            }
            for (s, q) in bs.iter_mut().zip(dst.chunks_exact(16)) {
                *s = q.iter().map(|&v| i16::from(v)).sum();
            }
            *dx = 1.0 / iscale;
        }
        let mut d8 = Vec::with_capacity(m / 8 * 8 * nsb);
        for g in 0..m / 8 {
            for s in 0..nsb {
                d8.extend((0..8).map(|r| d[(g * 8 + r) * nsb + s]));
            }
        }
        Self { qs, d, bsums, d8 }
    }
}

/// The 6-bit scale and minimum of sub-block `j` from a Q4_K/Q5_K 12-byte scale field.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Fills `m.qs`, `m.sc`, `m.d` (and `m.mn`) from the GGUF super-blocks in `bytes` (already
/// checked to be `n·k/256` blocks of the format's size).
pub(super) fn pack(m: &mut PackedMatrix, bytes: &[u8], block_bytes: usize) {
    let blocks = bytes.len() / block_bytes;
    m.qs = Vec::with_capacity(blocks * qs_bytes(m.format));
    m.sc = Vec::with_capacity(blocks * 16);
    m.d = Vec::with_capacity(blocks);
    if m.format != Format::Q6K {
        m.mn = Vec::with_capacity(blocks);
    }
    for b in bytes.chunks_exact(block_bytes) {
        match m.format {
            Format::Q4K | Format::Q5K => {
                m.d.push(le16(b, 0));
                m.mn.push(le16(b, 2));
                let scales = &b[4..16];
                let pairs: [(u8, u8); 8] = std::array::from_fn(|j| scale_min(j, scales));
                m.sc.extend(pairs.iter().map(|p| p.0));
                m.sc.extend(pairs.iter().map(|p| p.1));
                // GGUF: Q5_K has the fifth bits before the nibbles; we keep nibbles first so
                // Q4_K and Q5_K share offsets.
                if m.format == Format::Q5K {
                    m.qs.extend_from_slice(&b[48..176]);
                    m.qs.extend_from_slice(&b[16..48]);
                } else {
                    m.qs.extend_from_slice(&b[16..144]);
                }
            }
            _ => {
                m.qs.extend_from_slice(&b[..192]);
                m.sc.extend_from_slice(&b[192..208]);
                m.d.push(le16(b, 208));
            }
        }
    }
}

/// Row `i` as f32, with candle's dequantization arithmetic (so embedding lookups match it).
pub(super) fn row(w: &PackedMatrix, i: usize) -> Vec<f32> {
    let nsb = w.k / QK;
    let qb = qs_bytes(w.format);
    let mut out = Vec::with_capacity(w.k);
    for s in i * nsb..(i + 1) * nsb {
        let q = &w.qs[s * qb..(s + 1) * qb];
        let sc = &w.sc[s * 16..(s + 1) * 16];
        let d = f16::from_bits(w.d[s]).to_f32();
        if w.format == Format::Q6K {
            for v in 0..QK {
                let scale = f32::from(sc[v / 16] as i8);
                out.push(d * scale * (q6(q, v) - 32) as f32);
            }
            continue;
        }
        let dmin = f16::from_bits(w.mn[s]).to_f32();
        for v in 0..QK {
            let sub = v / 32;
            let (d1, m1) = (d * f32::from(sc[sub]), dmin * f32::from(sc[8 + sub]));
            let nib = q4(q, v);
            let x = if w.format == Format::Q5K {
                // candle adds the fifth bit as 16.0 to the nibble as f32; the same value.
                f32::from(nib) + if fifth(q, v) { 16.0 } else { 0.0 }
            } else {
                f32::from(nib)
            };
            out.push(d1 * x - m1);
        }
    }
    out
}

/// The 4-bit part of value `v` of a Q4_K/Q5_K super-block: 64-value chunk `v/64` is 32 bytes,
/// low nibbles first.
fn q4(q: &[u8], v: usize) -> u8 {
    let byte = q[v / 64 * 32 + v % 32];
    if v % 64 < 32 { byte & 0xF } else { byte >> 4 }
}

/// Whether value `v` of a Q5_K super-block has its fifth bit (bit `v/32` of byte `v % 32` of the
/// bit field after the nibbles).
fn fifth(q: &[u8], v: usize) -> bool {
    (q[QK / 2 + v % 32] >> (v / 32)) & 1 == 1
}

/// Value `v` of a Q6_K super-block, unsigned (0..64).
fn q6(q: &[u8], v: usize) -> i32 {
    let (half, l) = (v / 128, v % 128);
    let (ql, qh) = (&q[64 * half..], &q[128 + 32 * half..]);
    let low = if l < 64 { ql[l % 64] & 0xF } else { ql[l % 64] >> 4 };
    let high = (qh[l % 32] >> (2 * (l / 32))) & 3;
    i32::from(low | (high << 4))
}

/// The two exact integer sums of weight super-block `s` (global index) with activation
/// super-block `xq` / `bs`: `(Σ sc·(q·x) [− 32·Σ sc·bsum16 for Q6_K], Σ m·bsum32)`.
pub(super) fn superblock_sums(w: &PackedMatrix, s: usize, xq: &[i8], bs: &[i16]) -> (i32, i32) {
    let qb = qs_bytes(w.format);
    let q = &w.qs[s * qb..(s + 1) * qb];
    let sc = &w.sc[s * 16..(s + 1) * 16];
    if w.format == Format::Q6K {
        let mut dot = 0i32;
        for (g, chunk) in xq.chunks_exact(16).enumerate() {
            let part: i32 = chunk
                .iter()
                .enumerate()
                .map(|(l, &x)| q6(q, g * 16 + l) * i32::from(x))
                .sum();
            dot += i32::from(sc[g] as i8) * (part - 32 * i32::from(bs[g]));
        }
        return (dot, 0);
    }
    let (mut dot, mut mins) = (0i32, 0i32);
    for (sub, chunk) in xq.chunks_exact(32).enumerate() {
        let part: i32 = chunk
            .iter()
            .enumerate()
            .map(|(l, &x)| {
                let v = sub * 32 + l;
                let hi = if w.format == Format::Q5K && fifth(q, v) {
                    16
                } else {
                    0
                };
                (i32::from(q4(q, v)) + hi) * i32::from(x)
            })
            .sum();
        dot += i32::from(sc[sub]) * part;
        mins += i32::from(sc[8 + sub]) * (i32::from(bs[2 * sub]) + i32::from(bs[2 * sub + 1]));
    }
    (dot, mins)
}

/// Weight row `j` · activation row `r`: the super-block sums accumulated in order with fused
/// multiply-adds (the order the AVX2 kernel uses).
pub(super) fn row_dot(w: &PackedMatrix, j: usize, x: &QuantActsK, r: usize) -> f32 {
    let (k, nsb) = (w.k, w.k / QK);
    let (mut acc, mut mins) = (0f32, 0f32);
    for t in 0..nsb {
        let s = j * nsb + t;
        let xq = &x.qs[r * k + t * QK..r * k + (t + 1) * QK];
        let bs = &x.bsums[(r * nsb + t) * 16..(r * nsb + t + 1) * 16];
        let (dot, msum) = superblock_sums(w, s, xq, bs);
        let dx = x.d[r * nsb + t];
        acc = (dot as f32).mul_add(f16::from_bits(w.d[s]).to_f32() * dx, acc);
        if w.format != Format::Q6K {
            mins = (msum as f32).mul_add(f16::from_bits(w.mn[s]).to_f32() * dx, mins);
        }
    }
    acc - mins
}
