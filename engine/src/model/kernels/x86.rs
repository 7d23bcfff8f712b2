//! AVX2 + FMA + F16C kernels.
//!
//! Each weight block is loaded and unpacked once, then dotted with the same block of up to 8
//! activation rows (one f32 accumulator register per row). Integer dots follow llama.cpp:
//! `maddubs` needs one unsigned operand, so Q8_0 moves the weight's sign onto the activation
//! (`|w| · sign(x, w)`), and 4/5-bit quants are unsigned already.
#![expect(
    unsafe_code,
    reason = "SIMD intrinsics and unchecked loads; entered only after runtime feature detection \
              and a size check of every buffer"
)]

use std::arch::x86_64::*;

use super::{Acts, BLOCK, Format, PackedMatrix, QuantActs};

/// Fills `out` (`rows × m`, transposed) with weight rows `j0..j0 + rows` dotted with every
/// activation row. Callers must have checked AVX2, FMA and F16C (`super::has_avx2`).
pub(super) fn rows(w: &PackedMatrix, acts: &Acts<'_>, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    assert!(super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    check_sizes(w, acts, m, j0 + rows, out.len() == rows * m);
    // SAFETY: the CPU has the features (asserted above) and `check_sizes` proved every read below
    // (rows < n, activation rows < m, scale arrays padded to `scale_stride`) is in bounds.
    unsafe { rows_avx2(w, acts, m, j0, rows, out) }
}

/// Panics unless the buffers match their shapes, so the unchecked loads cannot go out of bounds.
fn check_sizes(w: &PackedMatrix, acts: &Acts<'_>, m: usize, row_end: usize, out_ok: bool) {
    let (n, k) = (w.n, w.k);
    let nb = k / BLOCK;
    let quants = match w.format {
        Format::Q8 => n * k,
        Format::Q4 | Format::Q5 => n * k / 2,
        Format::F16 | Format::Bf16 => 2 * n * k,
    };
    let mut ok = out_ok && row_end <= n && w.qs.len() == quants && w.scale_stride >= nb;
    ok &= w.scale_stride.is_multiple_of(8);
    if !matches!(w.format, Format::F16 | Format::Bf16) {
        ok &= k.is_multiple_of(BLOCK) && w.d.len() == n * w.scale_stride;
    }
    if matches!(w.format, Format::Q4 | Format::Q5) {
        ok &= w.mn.len() == n * w.scale_stride;
    }
    if w.format == Format::Q5 {
        ok &= w.qh.len() == n * nb;
    }
    ok &= match acts {
        Acts::Float(x) => x.len() == m * k,
        Acts::Quant(q) => q.qs.len() == m * k && q.d.len() == m * nb && q.s.len() == m * nb,
    };
    assert!(ok, "packed matmul called with inconsistent buffers");
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &PackedMatrix, acts: &Acts<'_>, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    for (jj, col) in out.chunks_exact_mut(m).enumerate().take(rows) {
        let j = j0 + jj;
        let mut r = 0;
        while r < m {
            let take = match m - r {
                8.. => 8,
                4..=7 => 4,
                2 | 3 => 2,
                _ => 1,
            };
            let dst = &mut col[r..r + take];
            // SAFETY: bounds checked by `check_sizes`; features by the caller.
            unsafe {
                match take {
                    8 => group::<8>(w, acts, j, r, dst),
                    4 => group::<4>(w, acts, j, r, dst),
                    2 => group::<2>(w, acts, j, r, dst),
                    _ => group::<1>(w, acts, j, r, dst),
                }
            }
            r += take;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group<const R: usize>(w: &PackedMatrix, acts: &Acts<'_>, j: usize, r0: usize, out: &mut [f32]) {
    // SAFETY: forwarded from `rows_avx2`.
    let sums = unsafe {
        match (w.format, acts) {
            (Format::Q8, Acts::Quant(x)) => q8::<R>(w, j, x, r0),
            (Format::Q4, Acts::Quant(x)) => q45::<R, false>(w, j, x, r0),
            (Format::Q5, Acts::Quant(x)) => q45::<R, true>(w, j, x, r0),
            (Format::F16, Acts::Float(x)) => float::<R, false>(w, j, x, r0),
            (Format::Bf16, Acts::Float(x)) => float::<R, true>(w, j, x, r0),
            _ => [f32::NAN; R],
        }
    };
    out.copy_from_slice(&sums);
}

/// Q8_0 weights · Q8_0 activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8<const R: usize>(w: &PackedMatrix, j: usize, x: &QuantActs, r0: usize) -> [f32; R] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: row `j` of the weights and rows `r0..r0 + R` of the activations exist, and the scale
    // row is padded to a multiple of 8 (checked by `check_sizes`).
    unsafe {
        let wq = w.qs.as_ptr().add(j * k);
        let wd = w.d.as_ptr().add(j * w.scale_stride);
        let xq = x.qs.as_ptr().add(r0 * k);
        let xd = x.d.as_ptr().add(r0 * nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut ds = [0f32; 8];
        let mut b = 0;
        while b < nb {
            _mm256_storeu_ps(
                ds.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b).cast())),
            );
            let end = (b + 8).min(nb);
            for i in b..end {
                let wv = _mm256_loadu_si256(wq.add(i * BLOCK).cast());
                let aw = _mm256_sign_epi8(wv, wv);
                let dw = ds[i - b];
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(xq.add(r * k + i * BLOCK).cast());
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
                    let scale = _mm256_set1_ps(dw * *xd.add(r * nb + i));
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, *a);
                }
            }
            b = end;
        }
        acc.map(|a| hsum(a))
    }
}

/// Q4_x / Q5_x weights (`d·q + mn`, q unsigned) · Q8_0 activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45<const R: usize, const FIVE: bool>(
    w: &PackedMatrix,
    j: usize,
    x: &QuantActs,
    r0: usize,
) -> [f32; R] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: as in `q8`; `qh` has one word per block (checked for Q5 only, read only for Q5).
    unsafe {
        let wq = w.qs.as_ptr().add(j * k / 2);
        let wd = w.d.as_ptr().add(j * w.scale_stride);
        let wm = w.mn.as_ptr().add(j * w.scale_stride);
        let xq = x.qs.as_ptr().add(r0 * k);
        let xd = x.d.as_ptr().add(r0 * nb);
        let xs = x.s.as_ptr().add(r0 * nb);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        let fifth = _mm256_set1_epi8(0x10);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0f32; R];
        let (mut ds, mut ms) = ([0f32; 8], [0f32; 8]);
        let mut b = 0;
        while b < nb {
            _mm256_storeu_ps(
                ds.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b).cast())),
            );
            _mm256_storeu_ps(
                ms.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(wm.add(b).cast())),
            );
            let end = (b + 8).min(nb);
            for i in b..end {
                let raw = _mm_loadu_si128(wq.add(i * BLOCK / 2).cast());
                let mut wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
                if FIVE {
                    let bits = bytes_from_bits(*w.qh.as_ptr().add(j * nb + i));
                    wv = _mm256_or_si256(wv, _mm256_and_si256(bits, fifth));
                }
                let (dw, mw) = (ds[i - b], ms[i - b]);
                for r in 0..R {
                    let xv = _mm256_loadu_si256(xq.add(r * k + i * BLOCK).cast());
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                    let scale = _mm256_set1_ps(dw * *xd.add(r * nb + i));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r]);
                    mins[r] += mw * *xs.add(r * nb + i);
                }
            }
            b = end;
        }
        std::array::from_fn(|r| hsum(acc[r]) + mins[r])
    }
}

/// f16 / bf16 weights · f32 activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float<const R: usize, const BF: bool>(
    w: &PackedMatrix,
    j: usize,
    x: &[f32],
    r0: usize,
) -> [f32; R] {
    let k = w.k;
    let k8 = k / 8 * 8;
    // SAFETY: row `j` holds `k` two-byte values and rows `r0..r0 + R` of `x` exist (`check_sizes`).
    unsafe {
        let wp = w.qs.as_ptr().add(2 * j * k);
        let xp = x.as_ptr().add(r0 * k);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut i = 0;
        while i < k8 {
            let raw = _mm_loadu_si128(wp.add(2 * i).cast());
            let wv = if BF {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
            } else {
                _mm256_cvtph_ps(raw)
            };
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(r * k + i)), *a);
            }
            i += 8;
        }
        let mut sums = acc.map(|a| hsum(a));
        for i in k8..k {
            let bits = u16::from_le_bytes([*wp.add(2 * i), *wp.add(2 * i + 1)]);
            let wv = if BF {
                half::bf16::from_bits(bits).to_f32()
            } else {
                half::f16::from_bits(bits).to_f32()
            };
            for (r, s) in sums.iter_mut().enumerate() {
                *s += wv * *xp.add(r * k + i);
            }
        }
        sums
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Byte `i` is 0xFF where bit `i` of `x` is set (llama.cpp's `bytes_from_bits_32`).
#[target_feature(enable = "avx2,fma,f16c")]
fn bytes_from_bits(x: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(x as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let probe = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64));
    _mm256_cmpeq_epi8(probe, _mm256_set1_epi64x(-1))
}
