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
//! Packed layout: every K-quant interleaves eight rows as the 32-value block formats do (see
//! `pack`). Per group of eight rows and super-block, each of the eight 32-value sub-blocks is 128
//! bytes of low nibbles laid out as a Q4 block (byte `c·32 + r·4 + e` holds the low four bits of
//! row `r`'s quants `4c + e` and `16 + 4c + e` of the sub-block). The bits above them are in `qh`,
//! 32-byte vectors laid out as the nibbles. Q5_K: one plane of eight words per sub-block as Q5's
//! fifth bits (bit `c` of byte `e` of row `r`'s word is the bit of quant `4c + e`). Q6_K: two
//! vectors per sub-block, vector `v` covering `c = 2v, 2v + 1`; byte `v·32 + r·4 + e` holds, at
//! bits `4·(c − 2v)` and up, bits 4–5 of quant `4c + e` and then of `16 + 4c + e`, so one shift
//! and one mask put them in place (the plane layout took five operations a vector). `sc` holds 128
//! bytes per group and super-block: Q4_K/Q5_K the sub-scales `[sub-block][row]` then the
//! minimums likewise (u8), Q6_K its sixteen scales `[16-value block][row]` (i8). `d` and `mn` hold
//! the eight rows' `d` and `dmin` (f16 bits). Q4_K and Q5_K grow by 4 bytes per super-block over
//! GGUF (144 → 148, 176 → 180); Q6_K keeps its 210.

use half::f16;

use super::{Format, PackedMatrix, ROWS};

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
            let (Ok(src), Ok(dst)) = (<&[f32; QK]>::try_from(src), <&mut [i8; QK]>::try_from(dst)) else {
                continue;
            };
            *dx = quantize_fastest(src, dst);
            for (s, q) in bs.iter_mut().zip(dst.chunks_exact(16)) {
                *s = q.iter().map(|&v| i16::from(v)).sum();
            }
        }
        Self { qs, d, bsums }
    }
}

/// [`quantize_super_block`] with AVX2 when the CPU has it (bit for bit the same).
fn quantize_fastest(src: &[f32; QK], dst: &mut [i8; QK]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        return super::x86::quantize_super_block(src, dst);
    }
    quantize_super_block(src, dst)
}

/// One Q8_K super-block as llama.cpp's `quantize_row_q8_K`: the first value of largest magnitude
/// maps to −128, `dx = 1 / (−128 / max)`; an all-zero block stays zero with `dx = 0`. Returns `dx`.
pub(super) fn quantize_super_block(src: &[f32; QK], dst: &mut [i8; QK]) -> f32 {
    let max = src
        .iter()
        .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
    if max == 0.0 {
        dst.fill(0);
        return 0.0;
    }
    let iscale = -128.0 / max;
    for (q, &v) in dst.iter_mut().zip(src) {
        *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
    }
    1.0 / iscale
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

/// Fills `m.qs`, `m.sc`, `m.d` (and `m.mn`, `m.qh`) from the GGUF super-blocks in `bytes`
/// (already checked to be `n·k/256` blocks of the format's size).
pub(super) fn pack(m: &mut PackedMatrix, bytes: &[u8], block_bytes: usize) {
    let nsb = m.k / QK;
    let padded = m.n.div_ceil(ROWS) * ROWS;
    m.qs = vec![0; padded * nsb * QK / 2];
    m.sc = vec![0; padded * nsb * 16];
    m.d = vec![0; padded * nsb];
    let planes = high_planes(m.format);
    m.qh = vec![0; padded * nsb * 8 * planes];
    if m.format != Format::Q6K {
        m.mn = vec![0; padded * nsb];
    }
    for (s, b) in bytes.chunks_exact(block_bytes).enumerate() {
        let (j, t) = (s / nsb, s % nsb);
        let (sb, r) = (group_super_block(m, j, t), j % ROWS);
        if m.format == Format::Q6K {
            // GGUF Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8 scales, `d`.
            m.d[sb * ROWS + r] = le16(b, 208);
            for (i, &scale) in b[192..208].iter().enumerate() {
                m.sc[sb * 128 + i * ROWS + r] = scale;
            }
            let q: [u8; QK] = std::array::from_fn(|v| q6(&b[..192], v) as u8);
            interleave_subblocks(m, sb, r, &q, 2);
            continue;
        }
        m.d[sb * ROWS + r] = le16(b, 0);
        m.mn[sb * ROWS + r] = le16(b, 2);
        for i in 0..8 {
            let (scale, min) = scale_min(i, &b[4..16]);
            m.sc[sb * 128 + i * ROWS + r] = scale;
            m.sc[sb * 128 + 64 + i * ROWS + r] = min;
        }
        // GGUF Q5_K: fifth bits (32 bytes) then nibbles; Q4_K: nibbles only.
        let (nibbles, bits) = if m.format == Format::Q5K {
            (&b[48..176], Some(&b[16..48]))
        } else {
            (&b[16..144], None)
        };
        let q: [u8; QK] = std::array::from_fn(|v| {
            let byte = nibbles[v / 64 * 32 + v % 32];
            let nib = if v % 64 < 32 { byte & 0xF } else { byte >> 4 };
            let fifth = bits.map_or(0, |h| (h[v % 32] >> (v / 32)) & 1);
            nib | fifth << 4
        });
        interleave_subblocks(m, sb, r, &q, planes);
    }
}

/// Words of high bits (above the low nibble) a K-quant keeps in `qh` per row and sub-block: Q5_K's
/// one plane, Q6_K's two vectors.
pub(super) fn high_planes(format: Format) -> usize {
    match format {
        Format::Q4K => 0,
        Format::Q5K => 1,
        _ => 2,
    }
}

/// Writes row `r`'s 256 unsigned quants `q` of group super-block `sb` into the interleaved
/// low-nibble bytes and `planes` high-bit planes (see the module docs).
fn interleave_subblocks(m: &mut PackedMatrix, sb: usize, r: usize, q: &[u8; QK], planes: usize) {
    for (i, sub) in q.chunks_exact(32).enumerate() {
        let base = (sb * 8 + i) * 128 + r * 4;
        for e in 0..16 {
            m.qs[base + e / 4 * 32 + e % 4] = (sub[e] & 0xF) | ((sub[e + 16] & 0xF) << 4);
        }
        for p in 0..planes {
            let word = if m.format == Format::Q6K {
                q6k_high_word(sub, p)
            } else {
                sub.iter().enumerate().fold(0u32, |acc, (e, &v)| {
                    acc | (u32::from((v >> (4 + p)) & 1) << ((e % 4) * 8 + e / 4))
                })
            };
            m.qh[((sb * 8 + i) * planes + p) * ROWS + r] = word;
        }
    }
}

/// One row's Q6_K high-bit word `v` of a sub-block (`sub`: its 32 quants): byte `e` holds bits 4–5
/// of quants `4c + e` and `16 + 4c + e` for `c = 2v` at bits 0–3 and `c = 2v + 1` at bits 4–7.
fn q6k_high_word(sub: &[u8], v: usize) -> u32 {
    let mut word = 0u32;
    for e in 0..4 {
        for half in 0..2 {
            let c = 2 * v + half;
            let pair = ((sub[4 * c + e] >> 4) & 3) | (((sub[16 + 4 * c + e] >> 4) & 3) << 2);
            word |= u32::from(pair) << (8 * e + 4 * half);
        }
    }
    word
}

/// Bits 4–5 of quant `e` (0..32) of a sub-block from a row's two Q6_K high-bit words (see
/// [`q6k_high_word`]).
fn q6k_high_bits(words: [u32; 2], e: usize) -> i32 {
    let c = e % 16 / 4;
    let shift = 8 * (e % 4) + 4 * (c % 2) + if e < 16 { 0 } else { 2 };
    ((words[c / 2] >> shift) & 3) as i32
}

/// Index of row `j`'s super-block `t` in `d` and `mn`: the blocks' layout, with super-blocks.
fn d_at(w: &PackedMatrix, j: usize, t: usize) -> usize {
    super::pack::group_at(j, w.k / QK, t)
}

/// The group super-block holding row `j`'s super-block `t` (what `qs`, `qh` and `sc` are laid
/// out by, eight rows each).
fn group_super_block(w: &PackedMatrix, j: usize, t: usize) -> usize {
    (j / ROWS) * (w.k / QK) + t
}

/// Row `j`'s unsigned quant `v` (0..256) of super-block `t`, high bits included.
fn quant(w: &PackedMatrix, j: usize, t: usize, v: usize) -> i32 {
    let sb = group_super_block(w, j, t);
    let (i, e, r) = (v / 32, v % 32, j % ROWS);
    let q = e % 16;
    let byte = w.qs[(sb * 8 + i) * 128 + q / 4 * 32 + r * 4 + q % 4];
    let mut value = i32::from(if e < 16 { byte & 0xF } else { byte >> 4 });
    let planes = high_planes(w.format);
    if w.format == Format::Q6K {
        let word = |v: usize| w.qh[((sb * 8 + i) * planes + v) * ROWS + r];
        return value | q6k_high_bits([word(0), word(1)], e) << 4;
    }
    for p in 0..planes {
        let word = w.qh[((sb * 8 + i) * planes + p) * ROWS + r];
        value |= (((word >> ((e % 4) * 8 + e / 4)) & 1) as i32) << (4 + p);
    }
    value
}

/// Q6_K: row `j`'s scale of 16-value block `b` (0..16) in super-block `t`.
fn q6k_scale(w: &PackedMatrix, j: usize, t: usize, b: usize) -> i32 {
    let sb = group_super_block(w, j, t);
    i32::from(w.sc[sb * 128 + b * ROWS + j % ROWS] as i8)
}

/// Q4_K/Q5_K: row `j`'s scale and minimum of sub-block `i` in super-block `t`.
fn q45k_scale_min(w: &PackedMatrix, j: usize, t: usize, i: usize) -> (i32, i32) {
    let sb = group_super_block(w, j, t);
    let at = sb * 128 + i * ROWS + j % ROWS;
    (i32::from(w.sc[at]), i32::from(w.sc[at + 64]))
}

/// Row `i` as f32, with candle's dequantization arithmetic (so embedding lookups match it).
pub(super) fn row(w: &PackedMatrix, i: usize) -> Vec<f32> {
    let nsb = w.k / QK;
    let mut out = Vec::with_capacity(w.k);
    for t in 0..nsb {
        let d = f16::from_bits(w.d[d_at(w, i, t)]).to_f32();
        if w.format == Format::Q6K {
            for v in 0..QK {
                let scale = q6k_scale(w, i, t, v / 16) as f32;
                out.push(d * scale * (quant(w, i, t, v) - 32) as f32);
            }
            continue;
        }
        let dmin = f16::from_bits(w.mn[d_at(w, i, t)]).to_f32();
        for v in 0..QK {
            let (sc, m) = q45k_scale_min(w, i, t, v / 32);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            // candle adds Q5_K's fifth bit as 16.0 to the nibble as f32; the same value.
            out.push(d1 * quant(w, i, t, v) as f32 - m1);
        }
    }
    out
}

/// Value `v` of a GGUF Q6_K super-block (its first 192 bytes), unsigned (0..64).
fn q6(q: &[u8], v: usize) -> i32 {
    let (half, l) = (v / 128, v % 128);
    let (ql, qh) = (&q[64 * half..], &q[128 + 32 * half..]);
    let low = if l < 64 { ql[l % 64] & 0xF } else { ql[l % 64] >> 4 };
    let high = (qh[l % 32] >> (2 * (l / 32))) & 3;
    i32::from(low | (high << 4))
}

/// The two exact integer sums of row `j`'s super-block `t` with activation super-block `xq` /
/// `bs`: `(Σ sc·(q·x) [− 32·Σ sc·bsum16 for Q6_K], Σ m·bsum32)`.
pub(super) fn superblock_sums(w: &PackedMatrix, j: usize, t: usize, xq: &[i8], bs: &[i16]) -> (i32, i32) {
    if w.format == Format::Q6K {
        let mut dot = 0i32;
        for (g, chunk) in xq.chunks_exact(16).enumerate() {
            let part: i32 = chunk
                .iter()
                .enumerate()
                .map(|(l, &x)| quant(w, j, t, g * 16 + l) * i32::from(x))
                .sum();
            dot += q6k_scale(w, j, t, g) * (part - 32 * i32::from(bs[g]));
        }
        return (dot, 0);
    }
    let (mut dot, mut mins) = (0i32, 0i32);
    for (sub, chunk) in xq.chunks_exact(32).enumerate() {
        let part: i32 = chunk
            .iter()
            .enumerate()
            .map(|(l, &x)| quant(w, j, t, sub * 32 + l) * i32::from(x))
            .sum();
        let (sc, m) = q45k_scale_min(w, j, t, sub);
        dot += sc * part;
        mins += m * (i32::from(bs[2 * sub]) + i32::from(bs[2 * sub + 1]));
    }
    (dot, mins)
}

/// Weight row `j` · activation row `r`: the super-block sums accumulated in order with fused
/// multiply-adds (the order the AVX2 kernels use).
pub(super) fn row_dot(w: &PackedMatrix, j: usize, x: &QuantActsK, r: usize) -> f32 {
    let (k, nsb) = (w.k, w.k / QK);
    let (mut acc, mut mins) = (0f32, 0f32);
    for t in 0..nsb {
        let xq = &x.qs[r * k + t * QK..r * k + (t + 1) * QK];
        let bs = &x.bsums[(r * nsb + t) * 16..(r * nsb + t + 1) * 16];
        let (dot, msum) = superblock_sums(w, j, t, xq, bs);
        let dx = x.d[r * nsb + t];
        let at = d_at(w, j, t);
        acc = (dot as f32).mul_add(f16::from_bits(w.d[at]).to_f32() * dx, acc);
        if w.format != Format::Q6K {
            mins = (msum as f32).mul_add(f16::from_bits(w.mn[at]).to_f32() * dx, mins);
        }
    }
    acc - mins
}
