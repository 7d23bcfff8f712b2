//! AVX2 + FMA + F16C kernels.
//!
//! Each weight block is loaded and unpacked once, then dotted with the same block of up to 8
//! activation rows. Every row accumulates `Σ_blocks (integer dot) · (weight scale · row scale)` in
//! the same order with fused multiply-adds whether it runs alone or in a group of eight, so a
//! sequence's logits do not depend on what it is batched with. Integer dots follow llama.cpp:
//! `maddubs` needs one unsigned operand, so Q8_0 moves the weight's sign onto the activation
//! (`|w| · sign(x, w)`), and 4/5-bit quants are unsigned already.
#![expect(
    unsafe_code,
    reason = "SIMD intrinsics and unchecked loads; entered only after runtime feature detection \
              and a size check of every buffer"
)]

mod kquant;

use std::arch::x86_64::*;

use super::{Acts, BLOCK, Format, PackedMatrix, QuantActs};

/// Fills `out` (`rows × m`, transposed) with weight rows `j0..j0 + rows` dotted with every
/// activation row. Callers must have checked AVX2, FMA and F16C (`super::has_avx2`).
pub(super) fn rows(w: &PackedMatrix, acts: &Acts<'_>, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    assert!(super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    if let Acts::QuantK(x) = acts {
        return kquant::rows(w, x, m, j0, rows, out);
    }
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
        // Q8_K activations go to `kquant::rows`; other activations do not fit these weights.
        Format::Q4K | Format::Q5K | Format::Q6K => usize::MAX,
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
        Acts::Quant(q) => {
            let ok8 = q.d8.len() == m / 8 * 8 * nb && q.s8.len() == q.d8.len();
            let ok_stride = q.stride >= nb && q.stride.is_multiple_of(8);
            let ok_d = q.d.len() == m * q.stride && q.s.len() == q.d.len();
            q.qs.len() == m * k && ok_stride && ok_d && ok8
        }
        Acts::QuantK(_) => false,
    };
    assert!(ok, "packed matmul called with inconsistent buffers");
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &PackedMatrix, acts: &Acts<'_>, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    // One activation row of 4/5-bit weights: eight weight rows at a time, one per lane, so the
    // per-block scaling is one vector operation for eight rows instead of eight scalar ones. (The
    // same for Q8_0 was faster with the weights in cache but slower on the streamed output head.)
    let mut first = 0;
    if let (1, Acts::Quant(x)) = (m, acts) {
        while first + 8 <= rows {
            let j = j0 + first;
            // SAFETY: rows `j..j + 8` exist (`check_sizes` saw `j0 + rows <= n`); features by the caller.
            let sums = unsafe {
                match w.format {
                    Format::Q4 => q45_w8::<false>(w, j, x),
                    Format::Q5 => q45_w8::<true>(w, j, x),
                    _ => break,
                }
            };
            out[first..first + 8].copy_from_slice(&sums);
            first += 8;
        }
    }
    for (jj, col) in out.chunks_exact_mut(m).enumerate().take(rows).skip(first) {
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
            // Eight rows share one accumulator; see `q8_x8`.
            (Format::Q8, Acts::Quant(x)) if R == 8 => pad(q8_x8(w, j, x, r0 / 8)),
            (Format::Q4, Acts::Quant(x)) if R == 8 => pad(q45_x8::<false>(w, j, x, r0 / 8)),
            (Format::Q5, Acts::Quant(x)) if R == 8 => pad(q45_x8::<true>(w, j, x, r0 / 8)),
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

/// `v` as `[f32; R]` when `R == 8` (only called then).
fn pad<const R: usize>(v: [f32; 8]) -> [f32; R] {
    std::array::from_fn(|i| v.get(i).copied().unwrap_or(f32::NAN))
}

/// The eight `i32` lanes of each of `p[0..8]` summed: lane `r` of the result is `Σ p[r]`.
#[target_feature(enable = "avx2,fma,f16c")]
fn sum8(p: [__m256i; 8]) -> __m256i {
    let s01 = _mm256_hadd_epi32(p[0], p[1]);
    let s23 = _mm256_hadd_epi32(p[2], p[3]);
    let s45 = _mm256_hadd_epi32(p[4], p[5]);
    let s67 = _mm256_hadd_epi32(p[6], p[7]);
    // Per 128-bit half: rows 0-3 (and 4-7) each summed over that half's four lanes.
    let lo = _mm256_hadd_epi32(s01, s23);
    let hi = _mm256_hadd_epi32(s45, s67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256(lo, hi, 0x20),
        _mm256_permute2x128_si256(lo, hi, 0x31),
    )
}

/// Q8_0 weights · eight Q8_0 activation rows (group `g`). The eight integer dots of a block are
/// reduced into one vector and scaled at once, so the rows share one accumulator register
/// instead of one each (which made the compiler spill).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_x8(w: &PackedMatrix, j: usize, x: &QuantActs, g: usize) -> [f32; 8] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: as in `q8`; group `g` has 8 rows of quants and `nb × 8` entries of `d8`.
    unsafe {
        let wq = w.qs.as_ptr().add(j * k);
        let wd = w.d.as_ptr().add(j * w.scale_stride);
        let xq = x.qs.as_ptr().add(g * 8 * k);
        let xd = x.d8.as_ptr().add(g * 8 * nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut ds = [0f32; 8];
        let mut b = 0;
        while b < nb {
            _mm256_storeu_ps(
                ds.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b).cast())),
            );
            for (t, &dw) in ds.iter().enumerate().take(nb - b) {
                let i = b + t;
                let wv = _mm256_loadu_si256(wq.add(i * BLOCK).cast());
                let aw = _mm256_sign_epi8(wv, wv);
                let mut p = [_mm256_setzero_si256(); 8];
                for (r, pr) in p.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(xq.add(r * k + i * BLOCK).cast());
                    *pr = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
                }
                let scale = _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_loadu_ps(xd.add(i * 8)));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(p)), scale, acc);
            }
            b += 8;
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        out
    }
}

/// Q4_x / Q5_x weights · eight Q8_0 activation rows (group `g`); see `q8_x8`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45_x8<const FIVE: bool>(w: &PackedMatrix, j: usize, x: &QuantActs, g: usize) -> [f32; 8] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: as in `q8_x8`; `s8` has the same layout as `d8`.
    unsafe {
        let wq = w.qs.as_ptr().add(j * k / 2);
        let wd = w.d.as_ptr().add(j * w.scale_stride);
        let wm = w.mn.as_ptr().add(j * w.scale_stride);
        let xq = x.qs.as_ptr().add(g * 8 * k);
        let xd = x.d8.as_ptr().add(g * 8 * nb);
        let xs = x.s8.as_ptr().add(g * 8 * nb);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        let fifth = _mm256_set1_epi8(0x10);
        let (mut acc, mut mins) = (_mm256_setzero_ps(), _mm256_setzero_ps());
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
            for (t, (&dw, &mw)) in ds.iter().zip(&ms).enumerate().take(nb - b) {
                let i = b + t;
                let raw = _mm_loadu_si128(wq.add(i * BLOCK / 2).cast());
                let mut wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
                if FIVE {
                    let bits = bytes_from_bits(*w.qh.as_ptr().add(j * nb + i));
                    wv = _mm256_or_si256(wv, _mm256_and_si256(bits, fifth));
                }
                let mut p = [_mm256_setzero_si256(); 8];
                for (r, pr) in p.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(xq.add(r * k + i * BLOCK).cast());
                    *pr = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                }
                let scale = _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_loadu_ps(xd.add(i * 8)));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(p)), scale, acc);
                mins = _mm256_fmadd_ps(_mm256_set1_ps(mw), _mm256_loadu_ps(xs.add(i * 8)), mins);
            }
            b += 8;
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, mins));
        out
    }
}

/// Asks for `lines` cache lines from `p` on. The eight-row kernels walk eight rows in turn, a
/// pattern the hardware prefetcher does not follow as it does one row at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch(p: *const u8, lines: usize) {
    for l in 0..lines {
        // A prefetch is a hint and does not fault, whatever the address.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l * 64).cast());
    }
}

/// The f16 scales of weight rows `j..j + 8`, blocks `b..b + 8` (`ss` apart per row), as f32 and
/// transposed: vector `t` holds block `b + t` of the eight rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_8x8(p: *const u16, ss: usize) -> [__m256; 8] {
    // SAFETY: the caller guarantees eight rows of eight scales at `p`, `ss` apart.
    let r: [__m256; 8] =
        std::array::from_fn(|i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(i * ss).cast())) });
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Q4_x / Q5_x weight rows `j..j + 8` · one Q8_0 activation row: lane `t` is row `j + t`,
/// accumulated block by block with the fused multiply-adds `q45::<1>` does, so results match it
/// bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45_w8<const FIVE: bool>(w: &PackedMatrix, j: usize, x: &QuantActs) -> [f32; 8] {
    let k = w.k;
    let nb = k / BLOCK;
    let ss = w.scale_stride;
    // SAFETY: rows `j..j + 8` of the weights exist, activation row 0 exists, the scale arrays are
    // padded to a multiple of 8 per row, and `qh` has one word per block (checked for Q5 only,
    // read only for Q5) (`check_sizes`).
    unsafe {
        let wq = w.qs.as_ptr().add(j * k / 2);
        let wd = w.d.as_ptr().add(j * ss);
        let wm = w.mn.as_ptr().add(j * ss);
        let (xq, xd, xs) = (x.qs.as_ptr(), x.d.as_ptr(), x.s.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        let fifth = _mm256_set1_epi8(0x10);
        let (mut acc, mut mins) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b < nb {
            for r in 0..8 {
                prefetch(wq.wrapping_add(r * k / 2 + (b + 8) * BLOCK / 2), 2);
                if FIVE {
                    prefetch(w.qh.as_ptr().wrapping_add((j + r) * nb + b + 8).cast(), 1);
                }
            }
            let dw = scales_8x8(wd.add(b), ss);
            let mw = scales_8x8(wm.add(b), ss);
            for (t, (&dwt, &mwt)) in dw.iter().zip(&mw).enumerate().take(nb - b) {
                let i = b + t;
                let xv = _mm256_loadu_si256(xq.add(i * BLOCK).cast());
                let mut p = [_mm256_setzero_si256(); 8];
                for (r, pr) in p.iter_mut().enumerate() {
                    let raw = _mm_loadu_si128(wq.add(r * k / 2 + i * BLOCK / 2).cast());
                    let mut wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
                    if FIVE {
                        let bits = bytes_from_bits(*w.qh.as_ptr().add((j + r) * nb + i));
                        wv = _mm256_or_si256(wv, _mm256_and_si256(bits, fifth));
                    }
                    *pr = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                }
                let scale = _mm256_mul_ps(dwt, _mm256_set1_ps(*xd.add(i)));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(p)), scale, acc);
                mins = _mm256_fmadd_ps(mwt, _mm256_set1_ps(*xs.add(i)), mins);
            }
            b += 8;
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, mins));
        out
    }
}

/// Q8_0 weights · Q8_0 activations, for groups of fewer than eight rows.
///
/// Eight blocks at a time: their integer dots are reduced into one vector (`sum8`), converted
/// and scaled together, then added to the row's sum one block at a time with the same fused
/// multiply-add `q8_x8` does per lane, so results match it bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8<const R: usize>(w: &PackedMatrix, j: usize, x: &QuantActs, r0: usize) -> [f32; R] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: row `j` of the weights and rows `r0..r0 + R` of the activations exist, and both
    // scale arrays are padded to a multiple of 8 per row (checked by `check_sizes`).
    unsafe {
        let wq = w.qs.as_ptr().add(j * k);
        let wd = w.d.as_ptr().add(j * w.scale_stride);
        let xq = x.qs.as_ptr().add(r0 * k);
        let xd = x.d.as_ptr().add(r0 * x.stride);
        let mut acc = [0f32; R];
        let (mut sums, mut scales) = ([0f32; 8], [0f32; 8]);
        let mut b = 0;
        while b < nb {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b).cast()));
            let cnt = (nb - b).min(8);
            for (r, a) in acc.iter_mut().enumerate() {
                let (wb, xb) = (wq.add(b * BLOCK), xq.add(r * k + b * BLOCK));
                let p = if cnt == 8 {
                    q8_dots::<8>(wb, xb)
                } else {
                    q8_dots_partial(wb, xb, cnt)
                };
                _mm256_storeu_ps(sums.as_mut_ptr(), _mm256_cvtepi32_ps(sum8(p)));
                let dx = _mm256_loadu_ps(xd.add(r * x.stride + b));
                _mm256_storeu_ps(scales.as_mut_ptr(), _mm256_mul_ps(dw, dx));
                for (s, c) in sums.iter().zip(&scales).take(cnt) {
                    *a = s.mul_add(*c, *a);
                }
            }
            b += 8;
        }
        acc
    }
}

/// Q4_x / Q5_x weights (`d·q + mn`, q unsigned) · Q8_0 activations, for groups of fewer than
/// eight rows; arithmetic as in `q8` (and `q45_x8`).
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
        let xd = x.d.as_ptr().add(r0 * x.stride);
        let xs = x.s.as_ptr().add(r0 * x.stride);
        let (mut acc, mut mins) = ([0f32; R], [0f32; R]);
        let (mut sums, mut scales, mut ms) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let mut b = 0;
        while b < nb {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b).cast()));
            _mm256_storeu_ps(
                ms.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(wm.add(b).cast())),
            );
            let cnt = (nb - b).min(8);
            for r in 0..R {
                let (wb, xb) = (wq.add(b * BLOCK / 2), xq.add(r * k + b * BLOCK));
                let hb = if FIVE {
                    w.qh.as_ptr().add(j * nb + b)
                } else {
                    std::ptr::null()
                };
                // A literal 8 lets the inlined loop unroll for the full groups (all but the last).
                let p = if cnt == 8 {
                    q45_dots::<FIVE>(wb, hb, xb, 8)
                } else {
                    q45_dots::<FIVE>(wb, hb, xb, cnt)
                };
                _mm256_storeu_ps(sums.as_mut_ptr(), _mm256_cvtepi32_ps(sum8(p)));
                let dx = _mm256_loadu_ps(xd.add(r * x.stride + b));
                _mm256_storeu_ps(scales.as_mut_ptr(), _mm256_mul_ps(dw, dx));
                for t in 0..cnt {
                    acc[r] = sums[t].mul_add(scales[t], acc[r]);
                    mins[r] = ms[t].mul_add(*xs.add(r * x.stride + b + t), mins[r]);
                }
            }
            b += 8;
        }
        std::array::from_fn(|r| acc[r] + mins[r])
    }
}

/// Integer dots of `N` consecutive Q8_0 weight blocks at `wq` with the activation blocks at `xq`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_dots<const N: usize>(wq: *const u8, xq: *const i8) -> [__m256i; 8] {
    let ones = _mm256_set1_epi16(1);
    let mut p = [_mm256_setzero_si256(); 8];
    // SAFETY: the caller guarantees `N` blocks at both pointers.
    unsafe {
        for (t, pt) in p.iter_mut().enumerate().take(N) {
            let wv = _mm256_loadu_si256(wq.add(t * BLOCK).cast());
            let xv = _mm256_loadu_si256(xq.add(t * BLOCK).cast());
            let sx = _mm256_sign_epi8(xv, wv);
            *pt = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), sx), ones);
        }
    }
    p
}

/// [`q8_dots`] for the last, partial group of a row (`cnt < 8` blocks).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_dots_partial(wq: *const u8, xq: *const i8, cnt: usize) -> [__m256i; 8] {
    // SAFETY: forwarded; each call reads fewer blocks than the caller guarantees.
    unsafe {
        match cnt {
            1 => q8_dots::<1>(wq, xq),
            2 => q8_dots::<2>(wq, xq),
            3 => q8_dots::<3>(wq, xq),
            4 => q8_dots::<4>(wq, xq),
            5 => q8_dots::<5>(wq, xq),
            6 => q8_dots::<6>(wq, xq),
            _ => q8_dots::<7>(wq, xq),
        }
    }
}

/// Integer dots of `cnt ≤ 8` consecutive Q4/Q5 weight blocks (quants at `wq`, fifth bits at `qh`
/// for Q5) with the activation blocks at `xq`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45_dots<const FIVE: bool>(
    wq: *const u8,
    qh: *const u32,
    xq: *const i8,
    cnt: usize,
) -> [__m256i; 8] {
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    let fifth = _mm256_set1_epi8(0x10);
    let mut p = [_mm256_setzero_si256(); 8];
    // SAFETY: the caller guarantees `cnt` blocks at every pointer.
    unsafe {
        for (t, pt) in p.iter_mut().enumerate().take(cnt) {
            let raw = _mm_loadu_si128(wq.add(t * BLOCK / 2).cast());
            let mut wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
            if FIVE {
                wv = _mm256_or_si256(wv, _mm256_and_si256(bytes_from_bits(*qh.add(t)), fifth));
            }
            let xv = _mm256_loadu_si256(xq.add(t * BLOCK).cast());
            *pt = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
        }
    }
    p
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

/// Quantizes one block of 32 values to `dst` and returns `(scale, Σ q)`, with the arithmetic of
/// [`super::QuantActs::new`] (round half to even). Callers must have checked AVX2.
pub(super) fn quantize_block(src: &[f32; BLOCK], dst: &mut [i8; BLOCK]) -> (f32, i32) {
    // SAFETY: only reached when `has_avx2()` held (see `QuantActs::new`); both arrays are exactly
    // one block long.
    unsafe { quantize_block_avx2(src, dst) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_avx2(src: &[f32; BLOCK], dst: &mut [i8; BLOCK]) -> (f32, i32) {
    // SAFETY: four 8-float loads from a 32-float array and one 32-byte store into a 32-byte array.
    unsafe {
        let v: [__m256; 4] = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(src.as_ptr().add(o)));
        let abs = _mm256_set1_ps(-0.0);
        let mut amax = _mm256_andnot_ps(abs, v[0]);
        for x in &v[1..] {
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(abs, *x));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        let scale = _mm_cvtss_f32(m4) / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let q: [__m256i; 4] = v.map(|x| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(x, inv),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        // Pack 32 i32 → 32 i8; the packs work per 128-bit half, so restore the order after.
        let w16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(w16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(dst.as_mut_ptr().cast(), bytes);
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let s4 = _mm_hadd_epi32(s4, s4);
        let s4 = _mm_hadd_epi32(s4, s4);
        (scale, _mm_cvtsi128_si32(s4))
    }
}

/// `a · b` over `min(len)` values. Callers must have checked AVX2.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert!(super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    // SAFETY: features asserted; `dot_avx2` reads only below `min(a.len(), b.len())`.
    unsafe { dot_avx2(a, b) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let n16 = n / 16 * 16;
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: `i + 16 <= n16 <= n` for every load.
    unsafe {
        while i < n16 {
            s0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                s0,
            );
            let (a1, b1) = (a.as_ptr().add(i + 8), b.as_ptr().add(i + 8));
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a1), _mm256_loadu_ps(b1), s1);
            i += 16;
        }
    }
    let tail: f32 = a[n16..n].iter().zip(&b[n16..n]).map(|(x, y)| x * y).sum();
    hsum(_mm256_add_ps(s0, s1)) + tail
}

/// `y += a · x` over `min(len)` values. Callers must have checked AVX2.
pub(super) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert!(super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    // SAFETY: features asserted; `axpy_avx2` touches only indices below `min(y.len(), x.len())`.
    unsafe { axpy_avx2(y, a, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let n8 = n / 8 * 8;
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    // SAFETY: `i + 8 <= n8 <= n` for every load and store.
    unsafe {
        while i < n8 {
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                yp,
                _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
            );
            i += 8;
        }
    }
    for (d, &s) in y[n8..n].iter_mut().zip(&x[n8..n]) {
        *d = a.mul_add(s, *d);
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
