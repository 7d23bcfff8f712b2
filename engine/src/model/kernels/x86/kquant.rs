//! AVX2 kernels for Q4_K, Q5_K and Q6_K weights with Q8_K activations (arithmetic and layout in
//! `kernels::kquant`).
//!
//! The K-quants run on eight interleaved weight rows, as the 32-value block formats do (see
//! `x86`): lane `r` of the integer sums is weight row `r`'s exact `Σ sc·(q·x)` (the scales
//! multiply in `madd`), Q4_K/Q5_K collect `Σ m·bsum32` and Q6_K `32·Σ sc·bsum16` apart, and up to
//! four activation rows (Q6_K: eight) share one pass over the group's weights. The integers are exact and are
//! added to a row's sum in super-block order with the same fused multiply-add however many rows
//! run together, so batching does not change a result.

use std::arch::x86_64::*;

use super::super::kquant::{QK, QuantActsK, high_planes};
use super::super::{Columns, Format, PackedMatrix, ROWS};
use super::{add_scaled, broadcast4, fifth_bits, lanes, nibbles, pad, pair_dot};

/// [`super::super::kquant::quantize_super_block`] with AVX2, bit for bit (callers must have
/// checked AVX2): the largest magnitude found eight lanes at a time, the first value that has it
/// by a mask, products rounded half to even by `cvtps` (as `nearest_int`), and the clamp to
/// `-128..=127` done by the saturating packs.
pub(in super::super) fn quantize_super_block(src: &[f32; QK], dst: &mut [i8; QK]) -> f32 {
    assert!(super::super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    // SAFETY: features asserted; 32 eight-float loads from a 256-float array and eight 32-byte
    // stores into a 256-byte array.
    unsafe { quantize_super_block_avx2(src, dst) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_super_block_avx2(src: &[f32; QK], dst: &mut [i8; QK]) -> f32 {
    // SAFETY: see `quantize_super_block`.
    unsafe {
        let load = |i: usize| _mm256_loadu_ps(src.as_ptr().add(8 * i));
        let sign = _mm256_set1_ps(-0.0);
        // `max(|v|, amax)` keeps `amax` when `|v|` is NaN, as the scalar comparison skips it.
        let mut amax = _mm256_setzero_ps();
        for i in 0..QK / 8 {
            amax = _mm256_max_ps(_mm256_andnot_ps(sign, load(i)), amax);
        }
        let amax = super::hmax(amax);
        if amax == 0.0 {
            dst.fill(0);
            return 0.0;
        }
        let target = _mm256_set1_ps(amax);
        let first = (0..QK / 8)
            .find_map(|i| {
                let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                    _mm256_andnot_ps(sign, load(i)),
                    target,
                ));
                (hit != 0).then(|| 8 * i + hit.trailing_zeros() as usize)
            })
            .unwrap_or(0);
        let iscale = -128.0 / src[first];
        let scale = _mm256_set1_ps(iscale);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for c in 0..QK / 32 {
            let q: [__m256i; 4] =
                std::array::from_fn(|t| _mm256_cvtps_epi32(_mm256_mul_ps(scale, load(4 * c + t))));
            // Pack 32 i32 → 32 i8 with saturation; the packs work per 128-bit half.
            let w16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(32 * c).cast(),
                _mm256_permutevar8x32_epi32(w16, order),
            );
        }
        1.0 / iscale
    }
}

/// Fills `out`'s columns (weight rows `out.j0()..` of a K-quant matrix) of every activation row.
/// Callers must have checked AVX2, FMA and F16C.
pub(super) fn rows(w: &PackedMatrix, x: &QuantActsK, out: &mut Columns<'_>) {
    check_sizes(w, x, out.m(), out.j0(), out.j0() + out.width());
    // SAFETY: the caller checked the CPU features; `check_sizes` proved every read in bounds.
    unsafe { rows_avx2(w, x, out) }
}

/// Panics unless the buffers match their shapes, so the unchecked loads cannot go out of bounds.
pub(super) fn check_sizes(w: &PackedMatrix, x: &QuantActsK, m: usize, j0: usize, row_end: usize) {
    let (n, k) = (w.n, w.k);
    let nsb = k / QK;
    // Whole interleaved groups of eight rows, from a group's first row.
    let blocks = n.div_ceil(ROWS) * ROWS * nsb;
    let planes = high_planes(w.format);
    let mut ok = row_end <= n && k.is_multiple_of(QK) && j0.is_multiple_of(ROWS);
    ok &= w.qs.len() == blocks * QK / 2 && w.sc.len() == blocks * 16 && w.d.len() == blocks;
    ok &= w.format == Format::Q6K || w.mn.len() == blocks;
    ok &= w.qh.len() == blocks * 8 * planes;
    ok &= x.qs.len() == m * k && x.d.len() == m * nsb && x.bsums.len() == m * k / 16;
    assert!(ok, "K-quant matmul called with inconsistent buffers");
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &PackedMatrix, x: &QuantActsK, out: &mut Columns<'_>) {
    let (m, j0, rows) = (out.m(), out.j0(), out.width());
    // Rows a pass: every kernel unpacks a sub-block once for all of them and a row keeps only its
    // 32-bit sums between sub-blocks. Q5_K and Q6_K take eight (their unpacking is dearer); Q4_K
    // takes four, whose sums stay in registers (callgrind, 576 × 1536 at m = 8: 7 % fewer
    // instructions than eight; timings on the shared VM did not separate the two).
    // SAFETY: forwarded from `rows` (groups and activation rows in bounds per `check_sizes`).
    unsafe {
        match w.format {
            Format::Q6K => super::for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q6k_rows::<R>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
            Format::Q5K => super::for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q45k_rows::<R, true>(w, g, x, a), [8, 7, 6, 5, 4, 3, 2])
            }),
            _ => super::for_groups(m, j0, rows, out, |g, a, tile| {
                tiles!(tile, |R| q45k_rows::<R, false>(w, g, x, a), [4, 3, 2])
            }),
        }
    }
}

/// Q4_K / Q5_K weight rows `8g..8g + 8` · Q8_K activation rows `a0..a0 + R`. A sub-block's
/// quants are unpacked once into eight vectors (quants `4c..` and `16 + 4c..` of the eight rows)
/// that every activation row then reads; a row's `maddubs` results add as 16-bit integers (a Q4_K
/// pair is at most 2·15·128, all eight fit; Q5_K's twice that, four fit) before one `madd` with
/// the eight rows' sub-scales widens and scales them, so a row costs eight broadcasts and eight
/// `maddubs` per sub-block and keeps only its 32-bit sums between sub-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
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
                let scv = pairs(sc.add(i * ROWS));
                let u = unpack_subblock::<FIVE>(q.add(i * 128), qh.wrapping_add(i * ROWS));
                for (s, xa) in isum.iter_mut().zip(&xs) {
                    let xa = xa.add(t * QK + i * 32);
                    let half = |c: usize| pair_dot(u[2 * c], u[2 * c + 1], xa.add(4 * c));
                    let (s01, s23) = (
                        _mm256_add_epi16(half(0), half(1)),
                        _mm256_add_epi16(half(2), half(3)),
                    );
                    let sum = if FIVE {
                        _mm256_add_epi32(_mm256_madd_epi16(s01, scv), _mm256_madd_epi16(s23, scv))
                    } else {
                        _mm256_madd_epi16(_mm256_add_epi16(s01, s23), scv)
                    };
                    *s = _mm256_add_epi32(*s, sum);
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

/// Sub-block quants at `q` (128 bytes, eight rows) as eight vectors of unsigned quants: pair
/// `c` holds quants `4c..4c + 4` and `16 + 4c..` of every row, with Q5_K's fifth bits from the
/// eight words at `qh` (read only when `FIVE`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_subblock<const FIVE: bool>(q: *const u8, qh: *const u32) -> [__m256i; 8] {
    // SAFETY: the caller guarantees 128 bytes at `q`, and 32 at `qh` when `FIVE`.
    unsafe {
        let h = if FIVE {
            _mm256_loadu_si256(qh.cast())
        } else {
            _mm256_setzero_si256()
        };
        let mut u = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let (mut lo, mut hi) = nibbles(q.add(c * 32));
            if FIVE {
                lo = _mm256_or_si256(lo, fifth_bits(h, c));
                hi = _mm256_or_si256(hi, fifth_bits(h, c + 4));
            }
            (u[2 * c], u[2 * c + 1]) = (lo, hi);
        }
        u
    }
}

/// Q4_K / Q5_K minimums of weight rows `8g..8g + 8` against activation rows `a0..a0 + R`:
/// `Σ dmin·dx·Σ m·bsum32` over the super-blocks, one `madd` per sub-block with the pair of
/// 16-value sums broadcast.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q45k_mins<const R: usize>(
    w: &PackedMatrix,
    g: usize,
    x: &QuantActsK,
    a0: usize,
) -> [__m256; R] {
    let nsb = w.k / QK;
    // SAFETY: as in `q45k_rows`.
    unsafe {
        let mut mins = [_mm256_setzero_ps(); R];
        for t in 0..nsb {
            let sb = g * nsb + t;
            let sc = w.sc.as_ptr().add(sb * 128 + 64);
            let mut msum = [_mm256_setzero_si256(); R];
            for i in 0..8 {
                let mv = pairs(sc.add(i * ROWS));
                for (a, s) in msum.iter_mut().enumerate() {
                    let bs = x.bsums.as_ptr().add(((a0 + a) * nsb + t) * 16 + 2 * i);
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(mv, broadcast4(bs.cast())));
                }
            }
            add_scaled(&mut mins, &msum, w.mn.as_ptr().add(sb * ROWS), |a| {
                x.d[(a0 + a) * nsb + t]
            });
        }
        mins
    }
}

/// Sixteen i8 scales at `lo` and `hi` (eight rows each) as 16 `i16` lanes
/// `(lo0, hi0, lo1, hi1, …)`: `madd` with a broadcast pair of 16-value sums gives each row's
/// `lo·s0 + hi·s1`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale_pairs(lo: *const u8, hi: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 bytes at each pointer.
    unsafe {
        let v = _mm_unpacklo_epi8(_mm_loadl_epi64(lo.cast()), _mm_loadl_epi64(hi.cast()));
        _mm256_cvtepi8_epi16(v)
    }
}

/// Eight i8 at `p` as 16 `i16` lanes `(p0, p0, p1, p1, …)`: lane pair `r` multiplies row `r`'s
/// two 16-bit sums in `madd` (Q4_K/Q5_K's 6-bit scales and minimums read the same as i8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pairs(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 bytes at `p`.
    let v = _mm256_cvtepi8_epi32(unsafe { _mm_loadl_epi64(p.cast()) });
    _mm256_or_si256(
        _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)),
        _mm256_slli_epi32::<16>(v),
    )
}

/// Q6_K weight rows `8g..8g + 8` · Q8_K activation rows `a0..a0 + R`. A sub-block's 6-bit
/// quants are rebuilt once (nibbles, and the high bits shifted into place from their two
/// vectors) for every activation row; a `maddubs` pair is at most 2·63·128, so two add as 16-bit
/// integers before a `madd` with the eight rows' scales of their 16-value half (quants `4c..` are
/// the first half, `16 + 4c..` the second).
#[target_feature(enable = "avx2,fma,f16c")]
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
                let (s_lo, s_hi) = (pairs(sc.add(2 * i * ROWS)), pairs(sc.add((2 * i + 1) * ROWS)));
                let u = unpack_q6k(q.add(i * 128), qh.add(2 * i * ROWS));
                for (s, xa) in isum.iter_mut().zip(&xs) {
                    let xa = xa.add(t * QK + i * 32);
                    let dot = |v: usize, c: usize| {
                        let at = xa.add(4 * c + 16 * v);
                        _mm256_maddubs_epi16(u[2 * c + v], broadcast4(at))
                    };
                    let part = |v: usize, c: usize, scales: __m256i| {
                        _mm256_madd_epi16(_mm256_add_epi16(dot(v, c), dot(v, c + 1)), scales)
                    };
                    let lo = _mm256_add_epi32(part(0, 0, s_lo), part(0, 2, s_lo));
                    let hi = _mm256_add_epi32(part(1, 0, s_hi), part(1, 2, s_hi));
                    *s = _mm256_add_epi32(*s, _mm256_add_epi32(lo, hi));
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

/// A Q6_K sub-block (nibbles at `q`, 128 bytes; high bits at `qh`, two 32-byte vectors) as eight
/// vectors of 6-bit quants, ordered as [`unpack_subblock`]'s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q6k(q: *const u8, qh: *const u32) -> [__m256i; 8] {
    // SAFETY: the caller guarantees 128 bytes at `q` and 64 at `qh`.
    unsafe {
        let bits = _mm256_set1_epi8(0x30);
        let h = [
            _mm256_loadu_si256(qh.cast()),
            _mm256_loadu_si256(qh.add(ROWS).cast()),
        ];
        let mut u = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let (lo, hi) = nibbles(q.add(c * 32));
            let v = h[c / 2];
            // Bits 0–1 / 2–3 of a byte (c even) or 4–5 / 6–7 (c odd) to bits 4–5; what the 16-bit
            // shifts carry in from the next byte lies outside the mask.
            let (hl, hh) = if c % 2 == 0 {
                (_mm256_slli_epi16::<4>(v), _mm256_slli_epi16::<2>(v))
            } else {
                (v, _mm256_srli_epi16::<2>(v))
            };
            u[2 * c] = _mm256_or_si256(lo, _mm256_and_si256(hl, bits));
            u[2 * c + 1] = _mm256_or_si256(hi, _mm256_and_si256(hh, bits));
        }
        u
    }
}
