//! AVX2 kernels for Q4_K, Q5_K and Q6_K weights with Q8_K activations (arithmetic and layout in
//! `kernels::kquant`).
//!
//! Q4_K and Q5_K run on eight interleaved weight rows, as the 32-value block formats do (see
//! `x86`): lane `r` of the integer sums is weight row `r`'s exact `Σ sc·(q·x)` (the sub-scales
//! multiply in `madd`), a second sum collects `Σ m·bsum32`, and up to four activation rows share
//! one pass over the group's weights.
//!
//! Q6_K keeps one row at a time: per super-block and activation row one vector of `i32` lanes
//! whose sum is the exact `Σ sc·(q·x) − 32·Σ sc·bsum16`; groups of eight activation rows unpack
//! each weight super-block once and reduce the eight rows' vectors together, a single row reduces
//! eight super-blocks together.
//!
//! Either way the integers are exact, and they are added to the row's sum in super-block order
//! with the same fused multiply-add, so batching does not change a result.

use std::arch::x86_64::*;

use super::super::kquant::{QK, QuantActsK, qs_bytes};
use super::super::{Format, PackedMatrix, ROWS};
use super::{broadcast4, fifth_bits, lanes, pad, sum8};

/// Fills `out` (`m × rows`) with weight rows `j0..j0 + rows` of a K-quant matrix
/// dotted with every activation row. Callers must have checked AVX2, FMA and F16C.
pub(super) fn rows(w: &PackedMatrix, x: &QuantActsK, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    check_sizes(w, x, m, j0, j0 + rows, out.len() == rows * m);
    // SAFETY: the caller checked the CPU features; `check_sizes` proved every read in bounds.
    unsafe { rows_avx2(w, x, m, j0, rows, out) }
}

/// Panics unless the buffers match their shapes, so the unchecked loads cannot go out of bounds.
fn check_sizes(w: &PackedMatrix, x: &QuantActsK, m: usize, j0: usize, row_end: usize, out_ok: bool) {
    let (n, k) = (w.n, w.k);
    let nsb = k / QK;
    let mut ok = out_ok && row_end <= n && k.is_multiple_of(QK);
    if w.format == Format::Q6K {
        let blocks = n * nsb;
        ok &= w.qs.len() == blocks * qs_bytes(w.format) && w.sc.len() == blocks * 16;
        ok &= w.d.len() == blocks;
    } else {
        // Interleaved: whole groups of eight rows, from a group's first row.
        let blocks = n.div_ceil(ROWS) * ROWS * nsb;
        ok &= j0.is_multiple_of(ROWS) && w.qs.len() == blocks * QK / 2 && w.sc.len() == blocks * 16;
        ok &= w.d.len() == blocks && w.mn.len() == blocks;
        ok &= w.format != Format::Q5K || w.qh.len() == blocks * 8;
    }
    ok &= x.qs.len() == m * k && x.d.len() == m * nsb && x.bsums.len() == m * k / 16;
    ok &= x.d8.len() == m / 8 * 8 * nsb;
    assert!(ok, "K-quant matmul called with inconsistent buffers");
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &PackedMatrix, x: &QuantActsK, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    if w.format != Format::Q6K {
        // SAFETY: forwarded from `rows` (groups and activation rows in bounds per `check_sizes`).
        return unsafe {
            super::for_groups(m, j0, rows, out, |g, a, tile| match (tile, w.format) {
                (4, Format::Q4K) => q45k_rows::<4, false>(w, g, x, a),
                (4, _) => q45k_rows::<4, true>(w, g, x, a),
                (3, Format::Q4K) => pad(q45k_rows::<3, false>(w, g, x, a)),
                (3, _) => pad(q45k_rows::<3, true>(w, g, x, a)),
                (2, Format::Q4K) => pad(q45k_rows::<2, false>(w, g, x, a)),
                (2, _) => pad(q45k_rows::<2, true>(w, g, x, a)),
                (_, Format::Q4K) => pad(q45k_rows::<1, false>(w, g, x, a)),
                (_, _) => pad(q45k_rows::<1, true>(w, g, x, a)),
            })
        };
    }
    for jj in 0..rows {
        let j = j0 + jj;
        let full = m / 8 * 8;
        for g in 0..full / 8 {
            // SAFETY: forwarded from `rows`.
            let sums = unsafe { q6k_x8(w, j, x, g) };
            for (i, v) in sums.into_iter().enumerate() {
                out[(g * 8 + i) * rows + jj] = v;
            }
        }
        for r in full..m {
            // SAFETY: forwarded from `rows`.
            out[r * rows + jj] = unsafe { row1(w, j, x, r) };
        }
    }
}

/// Eight bytes at `p` as 16 `i16` lanes `(p0, p0, p1, p1, …)`: lane pair `r` multiplies row
/// `r`'s two 16-bit sums in `madd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pairs(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 bytes at `p`.
    let v = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) });
    _mm256_or_si256(v, _mm256_slli_epi32::<16>(v))
}

/// Q4_K / Q5_K weight rows `8g..8g + 8` · Q8_K activation rows `a0..a0 + R`. Per sub-block the
/// `maddubs` results add as 16-bit integers (a Q4_K pair is at most 2·15·128, eight fit; Q5_K's
/// twice that, four fit), then `madd` with the eight rows' sub-scales widens and scales them.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k_rows<const R: usize, const FIVE: bool>(
    w: &PackedMatrix,
    g: usize,
    x: &QuantActsK,
    a0: usize,
) -> [[f32; ROWS]; R] {
    let (k, nsb) = (w.k, w.k / QK);
    let low = _mm256_set1_epi8(0x0F);
    // SAFETY: group `g` has `nsb` super-blocks of 1024 quant bytes, 128 scale bytes, 8 `d` and
    // `dmin` (and for Q5_K 64 words of fifth bits, read only then); activation rows
    // `a0..a0 + R` have `k` quants, `nsb` scales and `k/16` sums (`check_sizes`).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for t in 0..nsb {
            let sb = g * nsb + t;
            let q = w.qs.as_ptr().add(sb * ROWS * QK / 2);
            let sc = w.sc.as_ptr().add(sb * 128);
            let qh = w.qh.as_ptr().wrapping_add(sb * 64);
            let mut isum = [_mm256_setzero_si256(); R];
            for i in 0..8 {
                let scv = pairs(sc.add(i * ROWS));
                let h = if FIVE {
                    _mm256_loadu_si256(qh.add(i * ROWS).cast())
                } else {
                    _mm256_setzero_si256()
                };
                let mut s16 = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(q.add(i * 128 + c * 32).cast());
                    let mut lo = _mm256_and_si256(v, low);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                    if FIVE {
                        lo = _mm256_or_si256(lo, fifth_bits(h, c));
                        hi = _mm256_or_si256(hi, fifth_bits(h, c + 4));
                    }
                    for (a, (s, s16)) in isum.iter_mut().zip(&mut s16).enumerate() {
                        let xa = x.qs.as_ptr().add((a0 + a) * k + t * QK + i * 32 + c * 4);
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, broadcast4(xa)),
                            _mm256_maddubs_epi16(hi, broadcast4(xa.add(16))),
                        );
                        *s16 = _mm256_add_epi16(*s16, p);
                        if c == 3 || (FIVE && c == 1) {
                            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(*s16, scv));
                            *s16 = _mm256_setzero_si256();
                        }
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(sb * ROWS).cast()));
            for (a, (s, acc)) in isum.iter().zip(&mut acc).enumerate() {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d[(a0 + a) * nsb + t]));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), scale, *acc);
            }
        }
        // Minimums: `Σ m·bsum32` per super-block, one `madd` per sub-block with the pair of
        // 16-value sums broadcast.
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
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(w.mn.as_ptr().add(sb * ROWS).cast()));
            for (a, (s, m)) in msum.iter().zip(&mut mins).enumerate() {
                let scale = _mm256_mul_ps(dmin, _mm256_set1_ps(x.d[(a0 + a) * nsb + t]));
                *m = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), scale, *m);
            }
        }
        std::array::from_fn(|a| lanes(_mm256_sub_ps(acc[a], mins[a])))
    }
}

/// An f16 value (bits) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The four 32-value groups of half `h` of a Q6_K super-block at `q`, unsigned (0..64).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_unpack(q: *const u8, h: usize) -> [__m256i; 4] {
    let (low, high) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
    // SAFETY: the caller guarantees a whole super-block at `q`.
    unsafe {
        let a = _mm256_loadu_si256(q.add(64 * h).cast());
        let b = _mm256_loadu_si256(q.add(64 * h + 32).cast());
        let hb = _mm256_loadu_si256(q.add(128 + 32 * h).cast());
        // Each byte of `hb` has the top two bits of four values; move each pair to bits 4-5.
        [
            _mm256_or_si256(
                _mm256_and_si256(a, low),
                _mm256_and_si256(_mm256_slli_epi16(hb, 4), high),
            ),
            _mm256_or_si256(
                _mm256_and_si256(b, low),
                _mm256_and_si256(_mm256_slli_epi16(hb, 2), high),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(a, 4), low),
                _mm256_and_si256(hb, high),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(b, 4), low),
                _mm256_and_si256(_mm256_srli_epi16(hb, 2), high),
            ),
        ]
    }
}

/// For each 32-value group of half `h`, the `i16` multipliers of `maddubs`'s 16 pair sums: the
/// group's first 16 values (low 128 bits) use one scale, the next 16 the following one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_scales(sc: *const u8, h: usize) -> [__m256i; 4] {
    // SAFETY: the caller guarantees 16 scale bytes at `sc`.
    let s = _mm_cvtepi8_epi16(unsafe { _mm_loadl_epi64(sc.add(8 * h).cast()) });
    let both = _mm256_broadcastsi128_si256(s);
    std::array::from_fn(|c| {
        // Byte indices of i16 lane 2c (low half) and 2c + 1 (high half), repeated.
        let pick = |lane: i32| _mm_set1_epi16(((2 * lane) | ((2 * lane + 1) << 8)) as i16);
        let c = c as i32;
        _mm256_shuffle_epi8(both, _mm256_set_m128i(pick(2 * c + 1), pick(2 * c)))
    })
}

/// `32 · Σ sc·bsum16` as lanes, for one Q6_K super-block and one activation row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_offset(sc: *const u8, bs: *const i16) -> __m256i {
    // SAFETY: the caller guarantees 16 scale bytes at `sc` and 16 sums at `bs`.
    unsafe {
        let s = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.cast()));
        _mm256_slli_epi32(_mm256_madd_epi16(s, _mm256_loadu_si256(bs.cast())), 5)
    }
}

/// Lanes summing to `Σ sc·(q − 32)·x` for one Q6_K super-block and one activation super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_sb(q: *const u8, sc: *const u8, x: *const i8, bs: *const i16) -> __m256i {
    let mut p = _mm256_setzero_si256();
    // SAFETY: the caller guarantees one super-block at every pointer.
    unsafe {
        for h in 0..2 {
            let qv = q6k_unpack(q, h);
            let sv = q6k_scales(sc, h);
            for c in 0..4 {
                let xv = _mm256_loadu_si256(x.add(128 * h + 32 * c).cast());
                p = _mm256_add_epi32(p, _mm256_madd_epi16(_mm256_maddubs_epi16(qv[c], xv), sv[c]));
            }
        }
        _mm256_sub_epi32(p, q6k_offset(sc, bs))
    }
}

/// Q6_K weight row `j` · activation row `r`, eight super-blocks reduced at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row1(w: &PackedMatrix, j: usize, x: &QuantActsK, r: usize) -> f32 {
    let (k, nsb, qb) = (w.k, w.k / QK, qs_bytes(w.format));
    let mut acc = 0f32;
    let mut dots = [0i32; 8];
    let mut t0 = 0;
    // SAFETY: super-blocks `j·nsb..(j+1)·nsb` of the weights and row `r` of the activations
    // exist (`check_sizes`).
    unsafe {
        while t0 < nsb {
            let cnt = (nsb - t0).min(8);
            let mut p = [_mm256_setzero_si256(); 8];
            for (t, p) in p.iter_mut().enumerate().take(cnt) {
                let s = j * nsb + t0 + t;
                let q = w.qs.as_ptr().add(s * qb);
                let sc = w.sc.as_ptr().add(s * 16);
                let xq = x.qs.as_ptr().add(r * k + (t0 + t) * QK);
                let bs = x.bsums.as_ptr().add((r * nsb + t0 + t) * 16);
                *p = q6k_sb(q, sc, xq, bs);
            }
            _mm256_storeu_si256(dots.as_mut_ptr().cast(), sum8(p));
            for (t, dot) in dots.iter().enumerate().take(cnt) {
                let s = j * nsb + t0 + t;
                acc = (*dot as f32).mul_add(f16_to_f32(w.d[s]) * x.d[r * nsb + t0 + t], acc);
            }
            t0 += 8;
        }
    }
    acc
}

/// Q6_K weight row `j` · the eight activation rows of group `g`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_x8(w: &PackedMatrix, j: usize, x: &QuantActsK, g: usize) -> [f32; 8] {
    let (k, nsb, qb) = (w.k, w.k / QK, qs_bytes(w.format));
    let mut acc = _mm256_setzero_ps();
    // SAFETY: as in `row1`, for activation rows `8g..8g + 8`; `d8` has 8 entries per
    // super-block per group.
    unsafe {
        let xq = x.qs.as_ptr().add(g * 8 * k);
        let xb = x.bsums.as_ptr().add(g * 8 * k / 16);
        for t in 0..nsb {
            let s = j * nsb + t;
            let q = w.qs.as_ptr().add(s * qb);
            let sc = w.sc.as_ptr().add(s * 16);
            let mut p = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                let qv = q6k_unpack(q, h);
                let sv = q6k_scales(sc, h);
                for c in 0..4 {
                    for (r, pr) in p.iter_mut().enumerate() {
                        let xv = _mm256_loadu_si256(xq.add(r * k + t * QK + 128 * h + 32 * c).cast());
                        let v = _mm256_madd_epi16(_mm256_maddubs_epi16(qv[c], xv), sv[c]);
                        *pr = _mm256_add_epi32(*pr, v);
                    }
                }
            }
            for (r, pr) in p.iter_mut().enumerate() {
                *pr = _mm256_sub_epi32(*pr, q6k_offset(sc, xb.add(r * k / 16 + t * 16)));
            }
            let dx = _mm256_loadu_ps(x.d8.as_ptr().add((g * nsb + t) * 8));
            let d = _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(w.d[s])), dx);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(p)), d, acc);
        }
    }
    let mut out = [0f32; 8];
    // SAFETY: an 8-float store into an 8-float array.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
    out
}
