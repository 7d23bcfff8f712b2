//! AVX-512 VNNI kernels (`KernelSet::Avx512Vnni`): the integer dots of the quantized formats with
//! `vpdpbusd`, which multiplies four unsigned bytes by four signed bytes and adds the four
//! products to a 32-bit lane, exactly, in one instruction (AVX2 needs `maddubs`, 16-bit adds and
//! a `madd`).
//!
//! The packed layout is already what `vpdpbusd` reads: a 32-bit lane of a weight vector holds four
//! consecutive quants of one of eight interleaved rows, and the activation's four quants are
//! broadcast against it. The vectors are 256 bits (AVX-512 VL): Zen 4 splits 512-bit integer
//! operations into two 256-bit halves, so wider vectors would not add throughput there, and eight
//! rows a vector keep the layout, the scales and the accumulation of the AVX2 kernels. What
//! AVX-512 adds besides the instruction is sixteen more vector registers, so every format takes
//! eight activation rows a pass. f16/bf16 weights, attention and the activations' quantization
//! run their AVX2 code.
//!
//! Every integer sum is the same exact integer as in the AVX2 and portable kernels and is added to
//! a row's accumulator in the same order with the same fused multiply-add, so results are bit for
//! bit those of `Avx2` (and of `Portable`, which the tests check).
//!
//! - Q8_0: weights are signed, so they are offset by 128 (`w ^ 0x80`, once per vector for all
//!   rows) and `128 · Σ x` of the block starts the sum.
//! - Q4_x / Q5_x and the K-quants' quants are unsigned already. K-quant sub-scales multiply the
//!   32-bit dot of their sub-block (`vpmulld`); Q6_K's per 16 values, so its dots go in two halves.
#![expect(
    unsafe_code,
    reason = "SIMD intrinsics and unchecked loads; entered only after runtime feature detection \
              and a size check of every buffer"
)]

use std::arch::x86_64::*;

use super::super::kquant::{QK, QuantActsK};
use super::super::{BLOCK, Columns, Format, PackedMatrix, QuantActs, ROWS};
use super::kquant::{check_sizes, q45k_mins, scale_pairs, unpack_q6k, unpack_subblock};
use super::{add_scaled, broadcast4, fifth_bits, for_groups, lanes, nibbles, pad, prefetch, scaled_add};

/// `acc + Σ_c` (the four bytes of `w[c]` in each lane · the four activation quants at
/// `x + at[c]`), in `ch` (1, 2 or 4) independent chains added at the end. One row's `vpdpbusd`s
/// in a single chain each wait on the last one's latency: with few rows a pass (batch 1, bound by
/// memory) that keeps a block's work in the scheduler longer and fewer loads are in flight; with
/// many rows, the rows are the independent work and two chains do ([`chains`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dots<const N: usize>(
    acc: __m256i,
    w: [__m256i; N],
    x: *const i8,
    at: [usize; N],
    ch: usize,
) -> __m256i {
    // SAFETY: the caller guarantees four readable bytes at each `x + at[c]`.
    unsafe {
        let mut chains = [_mm256_setzero_si256(); 4];
        chains[0] = acc;
        for c in 0..N {
            let i = c % ch;
            chains[i] = _mm256_dpbusd_epi32(chains[i], w[c], broadcast4(x.add(at[c])));
        }
        let mut width = ch;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                chains[i] = _mm256_add_epi32(chains[i], chains[i + width]);
            }
        }
        chains[0]
    }
}

/// Independent `vpdpbusd` chains a row takes in a pass of `r` activation rows (see [`dots`]).
const fn chains(r: usize) -> usize {
    if r >= 4 { 2 } else { 4 }
}

/// Offsets of the activation quants that [`nibbles`]' vectors in `(low, high)` pairs meet: a
/// 32-value block's low nibbles hold its quants `4c..`, the high ones `16 + 4c..`.
const PAIRED: [usize; 8] = [0, 16, 4, 20, 8, 24, 12, 28];

/// Offsets of eight vectors of consecutive quants (Q8_0), or four (one 16-value half).
const SEQ8: [usize; 8] = [0, 4, 8, 12, 16, 20, 24, 28];
const SEQ4: [usize; 4] = [0, 4, 8, 12];

/// Q8_0 / Q4_x / Q5_x weight rows `out.j0()..` · Q8_0 activation rows. The caller ran
/// `x86::check_sizes` for these buffers and checked the CPU's features.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn block_rows(w: &PackedMatrix, x: &QuantActs, out: &mut Columns<'_>) {
    let (m, j0, rows) = (out.m(), out.j0(), out.width());
    // SAFETY: groups and activation rows in bounds (`check_sizes`); features by the caller.
    unsafe {
        match w.format {
            Format::Q8 => for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q8_rows::<R>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
            Format::Q4 => for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q45_rows::<R, false>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
            _ => for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q45_rows::<R, true>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
        }
    }
}

/// Q8_0 weight rows `8g..8g + 8` · Q8_0 activation rows `a0..a0 + R` (see `x86::q8_rows` for
/// the accumulation): per block the eight weight vectors are made unsigned once (`w + 128`, the
/// sign bit flipped) and each row's sum starts at `−128 · Σ x`, so a row costs one `vpdpbusd`
/// per vector.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_rows<const R: usize>(w: &PackedMatrix, g: usize, x: &QuantActs, a0: usize) -> [[f32; ROWS]; R] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: group `g` has `nb` blocks of 256 quant bytes and 8 scales; activation rows
    // `a0..a0 + R` have `k` quants and `nb` scales and sums (`check_sizes`).
    unsafe {
        let wq = w.qs.as_ptr().add(g * nb * ROWS * BLOCK);
        let wd = w.d.as_ptr().add(g * nb * ROWS);
        let xq = x.qs.as_ptr().add(a0 * k);
        let (xd, xs) = (x.d.as_ptr().add(a0 * nb), x.qsum.as_ptr().add(a0 * nb));
        let flip = _mm256_set1_epi8(i8::MIN);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let wb = wq.add(b * ROWS * BLOCK);
            prefetch(wb.wrapping_add(4 * ROWS * BLOCK), 4);
            let mut wv = [_mm256_setzero_si256(); 8];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_xor_si256(_mm256_loadu_si256(wb.add(c * 32).cast()), flip);
            }
            let mut isum = [_mm256_setzero_si256(); R];
            for (a, s) in isum.iter_mut().enumerate() {
                let start = _mm256_set1_epi32(-128 * *xs.add(a * nb + b));
                *s = dots(start, wv, xq.add(a * k + b * BLOCK), SEQ8, chains(R));
            }
            add_scaled(&mut acc, &isum, wd.add(b * ROWS), |a| *xd.add(a * nb + b));
        }
        acc.map(lanes)
    }
}

/// Q4_x / Q5_x weight rows `8g..8g + 8` · Q8_0 activation rows `a0..a0 + R`, as `x86::q45_rows`
/// (a block unpacked once for every row, minimums summed apart) with one `vpdpbusd` per row and
/// vector.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q45_rows<const R: usize, const FIVE: bool>(
    w: &PackedMatrix,
    g: usize,
    x: &QuantActs,
    a0: usize,
) -> [[f32; ROWS]; R] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: as in `q8_rows`, with 128 quant bytes per block, and for Q5 eight words of fifth
    // bits per block (checked for Q5 only, read only for Q5).
    unsafe {
        let wq = w.qs.as_ptr().add(g * nb * ROWS * BLOCK / 2);
        let wd = w.d.as_ptr().add(g * nb * ROWS);
        let wm = w.mn.as_ptr().add(g * nb * ROWS);
        let qh = w.qh.as_ptr().wrapping_add(g * nb * ROWS);
        let xq = x.qs.as_ptr().add(a0 * k);
        let (xd, xs) = (x.d.as_ptr().add(a0 * nb), x.s.as_ptr().add(a0 * nb));
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let wb = wq.add(b * ROWS * BLOCK / 2);
            prefetch(wb.wrapping_add(4 * ROWS * BLOCK / 2), 2);
            let h = if FIVE {
                _mm256_loadu_si256(qh.add(b * ROWS).cast())
            } else {
                _mm256_setzero_si256()
            };
            // Low nibbles (quants `4c..`) and high nibbles (`16 + 4c..`) of the eight rows.
            let mut u = [_mm256_setzero_si256(); 8];
            for c in 0..4 {
                let (mut lo, mut hi) = nibbles(wb.add(c * 32));
                if FIVE {
                    lo = _mm256_or_si256(lo, fifth_bits(h, c));
                    hi = _mm256_or_si256(hi, fifth_bits(h, c + 4));
                }
                (u[2 * c], u[2 * c + 1]) = (lo, hi);
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b * ROWS).cast()));
            for (a, acc) in acc.iter_mut().enumerate() {
                let xa = xq.add(a * k + b * BLOCK);
                let sum = dots(_mm256_setzero_si256(), u, xa, PAIRED, chains(R));
                scaled_add(acc, sum, d, *xd.add(a * nb + b));
            }
        }
        let mut mins = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let mw = _mm256_cvtph_ps(_mm_loadu_si128(wm.add(b * ROWS).cast()));
            for (a, m) in mins.iter_mut().enumerate() {
                *m = _mm256_fmadd_ps(mw, _mm256_set1_ps(*xs.add(a * nb + b)), *m);
            }
        }
        std::array::from_fn(|a| lanes(_mm256_add_ps(acc[a], mins[a])))
    }
}

/// Fills `out`'s columns (weight rows `out.j0()..` of a K-quant matrix) of every activation row.
/// Callers must have checked the CPU's features (`KernelSet::Avx512Vnni`).
pub(super) fn k_rows(w: &PackedMatrix, x: &QuantActsK, out: &mut Columns<'_>) {
    check_sizes(w, x, out.m(), out.j0(), out.j0() + out.width());
    // SAFETY: the caller checked the CPU features; `check_sizes` proved every read in bounds.
    unsafe { k_rows_vnni(w, x, out) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn k_rows_vnni(w: &PackedMatrix, x: &QuantActsK, out: &mut Columns<'_>) {
    let (m, j0, rows) = (out.m(), out.j0(), out.width());
    // SAFETY: forwarded from `k_rows` (groups and activation rows in bounds per `check_sizes`).
    unsafe {
        match w.format {
            Format::Q6K => for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q6k_rows::<R>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
            Format::Q5K => for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q45k_rows::<R, true>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
            _ => for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q45k_rows::<R, false>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
        }
    }
}

/// Eight bytes at `p` (one per row) as 32-bit lanes, zero-extended (`SIGNED`: sign-extended).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn widen8<const SIGNED: bool>(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 bytes at `p`.
    let v = unsafe { _mm_loadl_epi64(p.cast()) };
    if SIGNED {
        _mm256_cvtepi8_epi32(v)
    } else {
        _mm256_cvtepu8_epi32(v)
    }
}

/// Q4_K / Q5_K weight rows `8g..8g + 8` · Q8_K activation rows `a0..a0 + R`: a sub-block is
/// unpacked once (as in `x86::kquant`) and a row's 32-value dot is eight `vpdpbusd`, then
/// multiplied by the eight rows' sub-scales (`vpmulld`); minimums as in the AVX2 kernel.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q45k_rows<const R: usize, const FIVE: bool>(
    w: &PackedMatrix,
    g: usize,
    x: &QuantActsK,
    a0: usize,
) -> [[f32; ROWS]; R] {
    let (k, nsb) = (w.k, w.k / QK);
    // SAFETY: group `g` has `nsb` super-blocks of 1024 quant bytes, 128 scale bytes, 8 `d` and
    // `dmin` (and for Q5_K 64 words of fifth bits, read only then); activation rows
    // `a0..a0 + R` have `k` quants, `nsb` scales and `k/16` sums (`check_sizes`).
    unsafe {
        let xs: [*const i8; R] = std::array::from_fn(|a| x.qs.as_ptr().add((a0 + a) * k));
        let mut acc = [_mm256_setzero_ps(); R];
        for t in 0..nsb {
            let sb = g * nsb + t;
            let q = w.qs.as_ptr().add(sb * ROWS * QK / 2);
            let sc = w.sc.as_ptr().add(sb * 128);
            let qh = w.qh.as_ptr().wrapping_add(sb * 64);
            let mut isum = [_mm256_setzero_si256(); R];
            for i in 0..8 {
                let scv = widen8::<false>(sc.add(i * ROWS));
                let u = unpack_subblock::<FIVE>(q.add(i * 128), qh.wrapping_add(i * ROWS));
                for (s, xa) in isum.iter_mut().zip(&xs) {
                    let xa = xa.add(t * QK + i * 32);
                    let dot = dots(_mm256_setzero_si256(), u, xa, PAIRED, chains(R));
                    *s = _mm256_add_epi32(*s, _mm256_mullo_epi32(dot, scv));
                }
            }
            add_scaled(&mut acc, &isum, w.d.as_ptr().add(sb * ROWS), |a| {
                x.d[(a0 + a) * nsb + t]
            });
        }
        let mins = q45k_mins::<R>(w, g, x, a0);
        std::array::from_fn(|a| lanes(_mm256_sub_ps(acc[a], mins[a])))
    }
}

/// Q6_K weight rows `8g..8g + 8` · Q8_K activation rows `a0..a0 + R`: a sub-block's 6-bit quants
/// are rebuilt once (as in `x86::kquant`); a row's dot goes in its two 16-value halves (four
/// `vpdpbusd` each) times the halves' scales, and the −32 offset is taken off per super-block as
/// in the AVX2 kernel.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6k_rows<const R: usize>(
    w: &PackedMatrix,
    g: usize,
    x: &QuantActsK,
    a0: usize,
) -> [[f32; ROWS]; R] {
    let (k, nsb) = (w.k, w.k / QK);
    // SAFETY: group `g` has `nsb` super-blocks of 1024 low-nibble bytes, 128 words of high bits,
    // 128 scale bytes and 8 `d`; activation rows `a0..a0 + R` have `k` quants, `nsb` scales and
    // `k/16` sums (`check_sizes`).
    unsafe {
        let xs: [*const i8; R] = std::array::from_fn(|a| x.qs.as_ptr().add((a0 + a) * k));
        let mut acc = [_mm256_setzero_ps(); R];
        for t in 0..nsb {
            let sb = g * nsb + t;
            let q = w.qs.as_ptr().add(sb * ROWS * QK / 2);
            let qh = w.qh.as_ptr().add(sb * 128);
            let sc = w.sc.as_ptr().add(sb * 128);
            let mut isum = [_mm256_setzero_si256(); R];
            for i in 0..8 {
                let s_lo = widen8::<true>(sc.add(2 * i * ROWS));
                let s_hi = widen8::<true>(sc.add((2 * i + 1) * ROWS));
                let u = unpack_q6k(q.add(i * 128), qh.add(2 * i * ROWS));
                let (lo, hi) = ([u[0], u[2], u[4], u[6]], [u[1], u[3], u[5], u[7]]);
                for (s, xa) in isum.iter_mut().zip(&xs) {
                    let xa = xa.add(t * QK + i * 32);
                    let dl = dots(_mm256_setzero_si256(), lo, xa, SEQ4, chains(R).min(2));
                    let dh = dots(_mm256_setzero_si256(), hi, xa.add(16), SEQ4, chains(R).min(2));
                    let part = _mm256_add_epi32(_mm256_mullo_epi32(dl, s_lo), _mm256_mullo_epi32(dh, s_hi));
                    *s = _mm256_add_epi32(*s, part);
                }
            }
            // The −32 offset of every quant: `32·Σ sc·bsum16`.
            for (a, s) in isum.iter_mut().enumerate() {
                let bs = x.bsums.as_ptr().add(((a0 + a) * nsb + t) * 16);
                let mut off = _mm256_setzero_si256();
                for i in 0..8 {
                    let pair = scale_pairs(sc.add(2 * i * ROWS), sc.add((2 * i + 1) * ROWS));
                    off = _mm256_add_epi32(off, _mm256_madd_epi16(pair, broadcast4(bs.add(2 * i).cast())));
                }
                *s = _mm256_sub_epi32(*s, _mm256_slli_epi32::<5>(off));
            }
            add_scaled(&mut acc, &isum, w.d.as_ptr().add(sb * ROWS), |a| {
                x.d[(a0 + a) * nsb + t]
            });
        }
        acc.map(lanes)
    }
}
