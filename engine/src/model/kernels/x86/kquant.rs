//! AVX2 kernels for Q4_K, Q5_K and Q6_K weights with Q8_K activations (arithmetic and layout in
//! `kernels::kquant`).
//!
//! Per super-block and activation row the kernels build one vector of `i32` lanes whose sum is the
//! exact integer `Σ sc·(q·x)` (Q6_K: minus `32·Σ sc·bsum16`), and for Q4_K/Q5_K a second one for
//! `Σ m·bsum32`. Groups of eight rows unpack each weight super-block once and reduce the eight
//! rows' vectors together; a single row collects up to eight super-blocks and reduces those
//! together. Either way the integers are the same, and they are added to the row's sum in
//! super-block order with the same fused multiply-add, so batching does not change a result.

use std::arch::x86_64::*;

use super::super::kquant::{QK, QuantActsK, qs_bytes};
use super::super::{Format, PackedMatrix};
use super::sum8;

/// Fills `out` (`m × rows`) with weight rows `j0..j0 + rows` of a K-quant matrix
/// dotted with every activation row. Callers must have checked AVX2, FMA and F16C.
pub(super) fn rows(w: &PackedMatrix, x: &QuantActsK, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    check_sizes(w, x, m, j0 + rows, out.len() == rows * m);
    // SAFETY: the caller checked the CPU features; `check_sizes` proved every read in bounds.
    unsafe { rows_avx2(w, x, m, j0, rows, out) }
}

/// Panics unless the buffers match their shapes, so the unchecked loads cannot go out of bounds.
fn check_sizes(w: &PackedMatrix, x: &QuantActsK, m: usize, row_end: usize, out_ok: bool) {
    let (n, k) = (w.n, w.k);
    let nsb = k / QK;
    let blocks = n * nsb;
    let mut ok = out_ok && row_end <= n && k.is_multiple_of(QK);
    ok &= w.qs.len() == blocks * qs_bytes(w.format) && w.sc.len() == blocks * 16;
    ok &= w.d.len() == blocks && (w.format == Format::Q6K || w.mn.len() == blocks);
    ok &= x.qs.len() == m * k && x.d.len() == m * nsb && x.bsums.len() == m * k / 16;
    ok &= x.d8.len() == m / 8 * 8 * nsb;
    assert!(ok, "K-quant matmul called with inconsistent buffers");
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &PackedMatrix, x: &QuantActsK, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    for jj in 0..rows {
        let j = j0 + jj;
        let full = m / 8 * 8;
        for g in 0..full / 8 {
            // SAFETY: forwarded from `rows`.
            let sums = unsafe {
                match w.format {
                    Format::Q4K => q45k_x8::<false>(w, j, x, g),
                    Format::Q5K => q45k_x8::<true>(w, j, x, g),
                    _ => q6k_x8(w, j, x, g),
                }
            };
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

/// An f16 value (bits) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The low and high 32-value halves of 64-value chunk `c` of a Q4_K/Q5_K super-block at `q`,
/// as unsigned bytes (with the fifth bit for Q5_K).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k_chunk<const FIVE: bool>(q: *const u8, c: usize) -> (__m256i, __m256i) {
    let low = _mm256_set1_epi8(0x0F);
    // SAFETY: the caller guarantees a whole super-block (`qs_bytes`) at `q`.
    unsafe {
        let raw = _mm256_loadu_si256(q.add(32 * c).cast());
        let mut lo = _mm256_and_si256(raw, low);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
        if FIVE {
            let bits = _mm256_loadu_si256(q.add(QK / 2).cast());
            let one = _mm256_set1_epi8(1);
            // Bit 2c of each byte is the fifth bit of the low half, bit 2c + 1 of the high half;
            // the 16-bit shifts leak bits across bytes, which the mask removes.
            let bit = |s: usize| {
                let v = _mm256_srl_epi16(bits, _mm_cvtsi32_si128(s as i32));
                _mm256_slli_epi16(_mm256_and_si256(v, one), 4)
            };
            lo = _mm256_or_si256(lo, bit(2 * c));
            hi = _mm256_or_si256(hi, bit(2 * c + 1));
        }
        (lo, hi)
    }
}

/// The 8 sub-block scales at `sc` as `i16`, in both 128-bit halves; [`pick_scale`] broadcasts one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k_scales(sc: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 bytes at `sc`.
    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(sc.cast()) }))
}

/// `i16` lane `i` of `both` (8 lanes repeated in each half) in all 16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pick_scale(both: __m256i, i: usize) -> __m256i {
    let i = i as i16;
    _mm256_shuffle_epi8(both, _mm256_set1_epi16((2 * i) | ((2 * i + 1) << 8)))
}

/// The 8 minimums at `m` as 16 `i16` lanes `(m0, m0, m1, m1, …)`, so `madd` with the 16
/// activation block sums of a super-block gives `m_i · bsum32_i` per `i32` lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn min_pairs(m: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 bytes at `m`.
    let v = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(m.cast()) });
    _mm256_or_si256(v, _mm256_slli_epi32(v, 16))
}

/// Lanes summing to `Σ sc·(q·x)` and `Σ m·bsum32` for one Q4_K/Q5_K super-block (`q`, scales
/// `sc`) and one activation super-block (`x`, `bs`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k_sb<const FIVE: bool>(
    q: *const u8,
    sc: *const u8,
    x: *const i8,
    bs: *const i16,
) -> (__m256i, __m256i) {
    let mut p = _mm256_setzero_si256();
    // SAFETY: the caller guarantees one super-block at every pointer (16 scale bytes at `sc`).
    unsafe {
        let scales = q45k_scales(sc);
        for c in 0..4 {
            let (lo, hi) = q45k_chunk::<FIVE>(q, c);
            let (s_lo, s_hi) = (pick_scale(scales, 2 * c), pick_scale(scales, 2 * c + 1));
            let xa = _mm256_loadu_si256(x.add(64 * c).cast());
            let xb = _mm256_loadu_si256(x.add(64 * c + 32).cast());
            let a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xa), s_lo);
            let b = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb), s_hi);
            p = _mm256_add_epi32(p, _mm256_add_epi32(a, b));
        }
        let mins = _mm256_madd_epi16(_mm256_loadu_si256(bs.cast()), min_pairs(sc.add(8)));
        (p, mins)
    }
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

/// Weight row `j` · activation row `r`, eight super-blocks reduced at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row1(w: &PackedMatrix, j: usize, x: &QuantActsK, r: usize) -> f32 {
    let (k, nsb, qb) = (w.k, w.k / QK, qs_bytes(w.format));
    let (mut acc, mut mins) = (0f32, 0f32);
    let (mut dots, mut msums) = ([0i32; 8], [0i32; 8]);
    let mut t0 = 0;
    // SAFETY: super-blocks `j·nsb..(j+1)·nsb` of the weights and row `r` of the activations
    // exist (`check_sizes`).
    unsafe {
        while t0 < nsb {
            let cnt = (nsb - t0).min(8);
            let (mut p, mut mp) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
            for t in 0..cnt {
                let s = j * nsb + t0 + t;
                let q = w.qs.as_ptr().add(s * qb);
                let sc = w.sc.as_ptr().add(s * 16);
                let xq = x.qs.as_ptr().add(r * k + (t0 + t) * QK);
                let bs = x.bsums.as_ptr().add((r * nsb + t0 + t) * 16);
                match w.format {
                    Format::Q4K => (p[t], mp[t]) = q45k_sb::<false>(q, sc, xq, bs),
                    Format::Q5K => (p[t], mp[t]) = q45k_sb::<true>(q, sc, xq, bs),
                    _ => p[t] = q6k_sb(q, sc, xq, bs),
                }
            }
            _mm256_storeu_si256(dots.as_mut_ptr().cast(), sum8(p));
            _mm256_storeu_si256(msums.as_mut_ptr().cast(), sum8(mp));
            for t in 0..cnt {
                let s = j * nsb + t0 + t;
                let dx = x.d[r * nsb + t0 + t];
                acc = (dots[t] as f32).mul_add(f16_to_f32(w.d[s]) * dx, acc);
                if w.format != Format::Q6K {
                    mins = (msums[t] as f32).mul_add(f16_to_f32(w.mn[s]) * dx, mins);
                }
            }
            t0 += 8;
        }
    }
    acc - mins
}

/// Q4_K / Q5_K weight row `j` · the eight activation rows of group `g`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k_x8<const FIVE: bool>(w: &PackedMatrix, j: usize, x: &QuantActsK, g: usize) -> [f32; 8] {
    let (k, nsb, qb) = (w.k, w.k / QK, qs_bytes(w.format));
    let (mut acc, mut mins) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    // SAFETY: as in `row1`, for rows `8g..8g + 8`; `d8` has 8 entries per super-block per group.
    unsafe {
        let xq = x.qs.as_ptr().add(g * 8 * k);
        let xb = x.bsums.as_ptr().add(g * 8 * k / 16);
        for t in 0..nsb {
            let s = j * nsb + t;
            let q = w.qs.as_ptr().add(s * qb);
            let sc = w.sc.as_ptr().add(s * 16);
            let mut p = [_mm256_setzero_si256(); 8];
            let scales = q45k_scales(sc);
            for c in 0..4 {
                let (lo, hi) = q45k_chunk::<FIVE>(q, c);
                let (s_lo, s_hi) = (pick_scale(scales, 2 * c), pick_scale(scales, 2 * c + 1));
                for (r, pr) in p.iter_mut().enumerate() {
                    let xr = xq.add(r * k + t * QK + 64 * c);
                    let xa = _mm256_loadu_si256(xr.cast());
                    let xb2 = _mm256_loadu_si256(xr.add(32).cast());
                    let a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xa), s_lo);
                    let b = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb2), s_hi);
                    *pr = _mm256_add_epi32(*pr, _mm256_add_epi32(a, b));
                }
            }
            let mdup = min_pairs(sc.add(8));
            let mp: [__m256i; 8] = std::array::from_fn(|r| {
                _mm256_madd_epi16(_mm256_loadu_si256(xb.add(r * k / 16 + t * 16).cast()), mdup)
            });
            let dx = _mm256_loadu_ps(x.d8.as_ptr().add((g * nsb + t) * 8));
            let d = _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(w.d[s])), dx);
            let dmin = _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(w.mn[s])), dx);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(p)), d, acc);
            mins = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(mp)), dmin, mins);
        }
    }
    let mut out = [0f32; 8];
    // SAFETY: an 8-float store into an 8-float array.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc, mins)) };
    out
}

/// Q6_K weight row `j` · the eight activation rows of group `g`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_x8(w: &PackedMatrix, j: usize, x: &QuantActsK, g: usize) -> [f32; 8] {
    let (k, nsb, qb) = (w.k, w.k / QK, qs_bytes(w.format));
    let mut acc = _mm256_setzero_ps();
    // SAFETY: as in `q45k_x8`.
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
