//! AVX2 + FMA + F16C kernels.
//!
//! The 32-value block formats run on eight interleaved weight rows (see `pack`): a vector holds
//! four quants of each of the eight rows, an activation's four quants are broadcast against it,
//! and the eight lanes of the integer sums are the eight rows' dots, so there are no horizontal
//! sums. One pass serves up to eight activation rows (`tiles!`), reading the group's weights once:
//! a block's weights (Q4/Q5: unpacked) wait in registers or L1 while each row needs only its sums
//! and accumulator (Q8_0's eight rows overflow the sixteen registers, but an accumulator is
//! touched once per block, and eight rows still beat four by ~5 % at m = 8). Every
//! row accumulates `Σ_blocks (integer dot) · (weight scale · row scale)` in the same order with
//! fused multiply-adds whatever it is batched with, so a sequence's logits do not depend on its
//! batch. Integer dots follow llama.cpp: `maddubs` needs one unsigned operand, so Q8_0 moves the
//! weight's sign onto the activation (`|w| · sign(x, w)`); 4/5-bit quants are unsigned already.
//! f16/bf16 weights are float multiply-adds, whose latency rather than the memory bus bounded a
//! single row: their kernel pairs activation rows with several groups (`float_tiles`).
#![expect(
    unsafe_code,
    reason = "SIMD intrinsics and unchecked loads; entered only after runtime feature detection \
              and a size check of every buffer"
)]

/// `$call` with the const `$R` = `$tile` activation rows, for the tiles listed (the first one the
/// largest, whose results are returned as they are) and 1 for any other; smaller tiles' results are
/// padded to the largest's count. The match that turns a pass's run-time tile into the kernels'
/// const row count.
macro_rules! tiles {
    ($tile:expr, |$R:ident| $call:expr, [$top:literal $(, $r:literal)*]) => {
        match $tile {
            $top => {
                const $R: usize = $top;
                $call
            }
            $($r => {
                const $R: usize = $r;
                pad($call)
            })*
            _ => {
                const $R: usize = 1;
                pad($call)
            }
        }
    };
}

mod kquant;
mod vnni;
pub(super) use kquant::quantize_super_block;

use std::arch::x86_64::*;

use super::{Acts, BLOCK, Columns, Format, KernelSet, PackedMatrix, QuantActs, ROWS};

/// Fills `out`'s columns (weight rows `out.j0()..`) of every activation row with `set`'s kernels
/// (`Avx2` or `Avx512Vnni`: the VNNI set runs its own integer dots and the AVX2 float kernels).
/// Panics unless the CPU supports `set`.
pub(super) fn rows(w: &PackedMatrix, acts: &Acts<'_>, out: &mut Columns<'_>, set: KernelSet) {
    let vnni = set == KernelSet::Avx512Vnni;
    assert!(
        matches!(set, KernelSet::Avx2 | KernelSet::Avx512Vnni) && set.supported(),
        "{} kernels on a CPU without them",
        set.name()
    );
    if let Acts::QuantK(x) = acts {
        return if vnni {
            vnni::k_rows(w, x, out)
        } else {
            kquant::rows(w, x, out)
        };
    }
    let (m, j0, rows) = (out.m(), out.j0(), out.width());
    check_sizes(w, acts, m, j0, j0 + rows);
    // SAFETY: the CPU has the features (asserted above) and `check_sizes` proved every read below
    // (rows < n, activation rows < m, scale arrays of every padded row) is in bounds.
    unsafe {
        match acts {
            Acts::Quant(x) if vnni => vnni::block_rows(w, x, out),
            _ => rows_avx2(w, acts, m, j0, rows, out),
        }
    }
}

/// Panics unless the buffers match their shapes, so the unchecked loads cannot go out of bounds.
fn check_sizes(w: &PackedMatrix, acts: &Acts<'_>, m: usize, j0: usize, row_end: usize) {
    let (n, k) = (w.n, w.k);
    let nb = k / BLOCK;
    let padded = n.div_ceil(ROWS) * ROWS;
    let quants = match w.format {
        Format::Q8 => padded * k,
        Format::Q4 | Format::Q5 => padded * k / 2,
        Format::F16 | Format::Bf16 => 2 * padded * k,
        // Q8_K activations go to `kquant::rows`; other activations do not fit these weights.
        Format::Q4K | Format::Q5K | Format::Q6K => usize::MAX,
    };
    // Rows go in whole interleaved groups of eight, from a group's first row.
    let mut ok = row_end <= n && w.qs.len() == quants && j0.is_multiple_of(ROWS);
    if !matches!(w.format, Format::F16 | Format::Bf16) {
        ok &= k.is_multiple_of(BLOCK) && w.d.len() == padded * nb;
    }
    if matches!(w.format, Format::Q4 | Format::Q5) {
        ok &= w.mn.len() == padded * nb;
    }
    if w.format == Format::Q5 {
        ok &= w.qh.len() == padded * nb;
    }
    ok &= match acts {
        Acts::Float(x) => x.len() == m * k,
        Acts::Quant(q) => {
            q.qs.len() == m * k && q.d.len() == m * nb && q.s.len() == q.d.len() && q.qsum.len() == q.d.len()
        }
        Acts::QuantK(_) => false,
    };
    assert!(ok, "packed matmul called with inconsistent buffers");
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    m: usize,
    j0: usize,
    rows: usize,
    out: &mut Columns<'_>,
) {
    if let Acts::Quant(x) = acts {
        // SAFETY: groups and activation rows in bounds (`check_sizes`); features by the caller.
        return unsafe {
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
        };
    }
    let Acts::Float(x) = acts else { return };
    // SAFETY: groups and activation rows in bounds (`check_sizes`); features by the caller.
    unsafe {
        if w.format == Format::Bf16 {
            float_tiles::<true>(w, x, m, j0, rows, out);
        } else {
            float_tiles::<false>(w, x, m, j0, rows, out);
        }
    }
}

/// Runs `kernel(group, first activation row, tile)` over the interleaved groups of weight rows
/// `j0..j0 + rows` (`j0` a multiple of eight) and activation rows in tiles of up to `T`,
/// and stores lane `t` of result `i` in row `a + i`, column `8g + t` of `out` for the rows that exist.
pub(super) fn for_groups<const T: usize>(
    m: usize,
    j0: usize,
    rows: usize,
    out: &mut Columns<'_>,
    mut kernel: impl FnMut(usize, usize, usize) -> [[f32; ROWS]; T],
) {
    let mut g0 = 0;
    while g0 < rows {
        let (g, take) = ((j0 + g0) / ROWS, (rows - g0).min(ROWS));
        let mut a = 0;
        while a < m {
            let tile = (m - a).min(T);
            let sums = kernel(g, a, tile);
            for (i, s) in sums.iter().enumerate().take(tile) {
                out.put_group(a + i, g0, s, take);
            }
            a += tile;
        }
        g0 += take;
    }
}

/// `v` padded to `T` entries (the rest unused).
pub(super) fn pad<const R: usize, const T: usize>(v: [[f32; ROWS]; R]) -> [[f32; ROWS]; T] {
    std::array::from_fn(|i| v.get(i).copied().unwrap_or([0.0; ROWS]))
}

/// Four activation quants at `p`, repeated in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn broadcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees four readable bytes at `p`.
    _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

pub(super) fn lanes(v: __m256) -> [f32; ROWS] {
    // SAFETY: `__m256` and `[f32; 8]` have the same size, and every bit pattern is a valid f32.
    unsafe { std::mem::transmute::<__m256, [f32; ROWS]>(v) }
}

/// Q8_0 weight rows `8g..8g + 8` · Q8_0 activation rows `a0..a0 + R`: lane `t` of a row's
/// accumulator is weight row `8g + t`. Per block, each of the eight weight vectors (four quants
/// of every row) meets the broadcast activation quants; `maddubs` needs one unsigned operand, so
/// the weight's sign moves onto the activation (`|w| · sign(x, w)`), as in llama.cpp. Every row
/// accumulates `Σ_blocks dot · (weight scale · row scale)` in block order with fused multiply-adds
/// whatever `R` is, so a sequence's logits do not depend on what it is batched with.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_rows<const R: usize>(w: &PackedMatrix, g: usize, x: &QuantActs, a0: usize) -> [[f32; ROWS]; R] {
    let k = w.k;
    let nb = k / BLOCK;
    // SAFETY: group `g` has `nb` blocks of 256 quant bytes and 8 scales; activation rows
    // `a0..a0 + R` have `k` quants and `nb` scales (`check_sizes`).
    unsafe {
        let wq = w.qs.as_ptr().add(g * nb * ROWS * BLOCK);
        let wd = w.d.as_ptr().add(g * nb * ROWS);
        let xq = x.qs.as_ptr().add(a0 * k);
        let xd = x.d.as_ptr().add(a0 * nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let wb = wq.add(b * ROWS * BLOCK);
            prefetch(wb.wrapping_add(4 * ROWS * BLOCK), 4);
            let mut isum = [_mm256_setzero_si256(); R];
            for c in 0..8 {
                let wv = _mm256_loadu_si256(wb.add(c * 32).cast());
                let aw = _mm256_sign_epi8(wv, wv);
                for (a, s) in isum.iter_mut().enumerate() {
                    let xb = broadcast4(xq.add(a * k + b * BLOCK + c * 4));
                    let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xb, wv));
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
                }
            }
            add_scaled(&mut acc, &isum, wd.add(b * ROWS), |a| *xd.add(a * nb + b));
        }
        acc.map(lanes)
    }
}

/// Q4_x / Q5_x weight rows `8g..8g + 8` (`d·q + mn`, q unsigned) · Q8_0 activation rows
/// `a0..a0 + R`; as [`q8_rows`], plus the minimums `Σ_blocks mn · (row scale · Σ row quants)`
/// summed apart and added at the end. A block's quants are unpacked once into eight vectors
/// that every row then reads (the unpacking costs as much as a row's dot), and a row keeps only
/// its accumulator, so up to eight rows share a pass. `maddubs` results are added as 16-bit
/// integers before widening: each pair of Q4 products is at most 2·15·127, so eight fit; Q5's are
/// at most 2·31·127, so four do.
#[target_feature(enable = "avx2,fma,f16c")]
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
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut u = [_mm256_setzero_si256(); 8];
        for b in 0..nb {
            let wb = wq.add(b * ROWS * BLOCK / 2);
            prefetch(wb.wrapping_add(4 * ROWS * BLOCK / 2), 2);
            let h = if FIVE {
                _mm256_loadu_si256(qh.add(b * ROWS).cast())
            } else {
                _mm256_setzero_si256()
            };
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
                let dot = |c: usize| pair_dot(u[2 * c], u[2 * c + 1], xa.add(4 * c));
                let (s01, s23) = (_mm256_add_epi16(dot(0), dot(1)), _mm256_add_epi16(dot(2), dot(3)));
                let sum = if FIVE {
                    _mm256_add_epi32(_mm256_madd_epi16(s01, ones), _mm256_madd_epi16(s23, ones))
                } else {
                    _mm256_madd_epi16(_mm256_add_epi16(s01, s23), ones)
                };
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

/// The 32-byte Q4-layout vector at `p` (see `pack`) as unsigned quants: the low nibbles (quants
/// `4c..4c + 4` of the eight rows) and the high nibbles (quants `16 + 4c..`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(p: *const u8) -> (__m256i, __m256i) {
    let low = _mm256_set1_epi8(0x0F);
    // SAFETY: the caller guarantees 32 bytes at `p`.
    let v = unsafe { _mm256_loadu_si256(p.cast()) };
    (
        _mm256_and_si256(v, low),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), low),
    )
}

/// 16-bit pair sums of `lo` with the four activation quants at `x` and `hi` with those at
/// `x + 16` (the halves [`nibbles`] splits a 32-value block into), added.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pair_dot(lo: __m256i, hi: __m256i, x: *const i8) -> __m256i {
    // SAFETY: the caller guarantees 20 bytes at `x`.
    unsafe {
        _mm256_add_epi16(
            _mm256_maddubs_epi16(lo, broadcast4(x)),
            _mm256_maddubs_epi16(hi, broadcast4(x.add(16))),
        )
    }
}

/// `acc[a] += sums[a] · (d · dx(a))` for each activation row `a`, where `d` points at the eight
/// weight rows' f16 scales: one fused multiply-add per row, the accumulation every kernel shares
/// (so a row's sum does not depend on its batch).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn add_scaled<const R: usize>(
    acc: &mut [__m256; R],
    sums: &[__m256i; R],
    d: *const u16,
    dx: impl Fn(usize) -> f32,
) {
    // SAFETY: the caller guarantees eight scales at `d`.
    let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(d.cast()) });
    for (a, (s, acc)) in sums.iter().zip(acc).enumerate() {
        scaled_add(acc, *s, d, dx(a));
    }
}

/// `acc += sum · (d · dx)`: one row's step of [`add_scaled`], the accumulation every kernel
/// shares.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scaled_add(acc: &mut __m256, sum: __m256i, d: __m256, dx: f32) {
    *acc = _mm256_fmadd_ps(
        _mm256_cvtepi32_ps(sum),
        _mm256_mul_ps(d, _mm256_set1_ps(dx)),
        *acc,
    );
}

/// 0x10 in each byte whose bit `c` is set in `h`: the fifth bits of quants `4c..4c + 4` of the
/// eight rows (see `PackedMatrix::qh`). Shifting 16-bit lanes by at most four cannot carry a bit
/// into another byte's bit 4.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fifth_bits(h: __m256i, c: usize) -> __m256i {
    let v = match c {
        0 => _mm256_slli_epi16::<4>(h),
        1 => _mm256_slli_epi16::<3>(h),
        2 => _mm256_slli_epi16::<2>(h),
        3 => _mm256_slli_epi16::<1>(h),
        4 => h,
        5 => _mm256_srli_epi16::<1>(h),
        6 => _mm256_srli_epi16::<2>(h),
        _ => _mm256_srli_epi16::<3>(h),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(0x10))
}

/// Lane `t` of the result is the sum of the eight lanes of `p[t]`.
#[target_feature(enable = "avx2,fma,f16c")]
fn sum8_ps(p: [__m256; 8]) -> __m256 {
    let s01 = _mm256_hadd_ps(p[0], p[1]);
    let s23 = _mm256_hadd_ps(p[2], p[3]);
    let s45 = _mm256_hadd_ps(p[4], p[5]);
    let s67 = _mm256_hadd_ps(p[6], p[7]);
    let lo = _mm256_hadd_ps(s01, s23);
    let hi = _mm256_hadd_ps(s45, s67);
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    )
}

/// Asks for `lines` cache lines from `p` on (a block or more ahead of the kernel).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch(p: *const u8, lines: usize) {
    for l in 0..lines {
        // A prefetch is a hint and does not fault, whatever the address.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l * 64).cast());
    }
}

/// Columns of a float weight group the kernel prefetches ahead of the one it reads.
const FLOAT_AHEAD: usize = 64;

/// Accumulators the float kernel keeps in flight: a fused multiply-add takes four cycles and
/// two issue per cycle, so fewer would leave the multipliers idle.
const CHAINS: usize = 8;

/// f16 / bf16 weight rows `j0..j0 + rows` · `m` f32 activation rows. Activation rows go in tiles
/// of 8, 4, 2 and 1 (`m`'s eights, then its binary digits), each tile against 1, 2, 4 or 8 groups
/// at a time so that [`CHAINS`] accumulators are in flight whatever the batch; weights are
/// converted once per pass, so a batch of eight converts them once, not twice as tiles of four
/// would. Groups go eight at a time (at most `8 · 16 · k` bytes), which every tile then reads
/// from cache.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_tiles<const BF: bool>(
    w: &PackedMatrix,
    x: &[f32],
    m: usize,
    j0: usize,
    rows: usize,
    out: &mut Columns<'_>,
) {
    let groups = rows.div_ceil(ROWS);
    for g0 in (0..groups).step_by(CHAINS) {
        let span = g0..(g0 + CHAINS).min(groups);
        let mut a = 0;
        while a < m {
            let tile = match m - a {
                8.. => 8,
                4.. => 4,
                2.. => 2,
                _ => 1,
            };
            let span = span.clone();
            // SAFETY: forwarded from `rows_avx2`; `a + tile <= m`.
            unsafe {
                match tile {
                    8 => float_pass::<8, 1, BF>(w, x, a, j0, span, rows, out),
                    4 => float_pass::<4, 2, BF>(w, x, a, j0, span, rows, out),
                    2 => float_pass::<2, 4, BF>(w, x, a, j0, span, rows, out),
                    _ => float_pass::<1, 8, BF>(w, x, a, j0, span, rows, out),
                }
            }
            a += tile;
        }
    }
}

/// Activation rows `a..a + R` · the groups `span` (counted from `j0`'s), `G` groups per call;
/// the last call repeats the span's last group to fill `G` and drops those sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_pass<const R: usize, const G: usize, const BF: bool>(
    w: &PackedMatrix,
    x: &[f32],
    a: usize,
    j0: usize,
    span: std::ops::Range<usize>,
    rows: usize,
    out: &mut Columns<'_>,
) {
    let k = w.k;
    // SAFETY: activation rows `a..a + R` exist (`float_tiles`) and hold `k` values.
    let xs: [*const f32; R] = std::array::from_fn(|i| unsafe { x.as_ptr().add((a + i) * k) });
    let mut g = span.start;
    while g < span.end {
        let gs: [usize; G] = std::array::from_fn(|i| j0 / ROWS + (g + i).min(span.end - 1));
        // SAFETY: every group in `gs` lies within the checked rows; features by the caller.
        let sums = unsafe { float_rows::<R, G, BF>(w, gs, xs) };
        for (i, group) in sums.iter().enumerate().take(span.end - g) {
            let row0 = (g + i) * ROWS;
            let take = (rows - row0).min(ROWS);
            for (r, lanes) in group.iter().enumerate() {
                out.put_group(a + r, row0, lanes, take);
            }
        }
        g += G;
    }
}

/// f16 / bf16 weight groups `gs` (rows `8g..8g + 8` each) · the `R` f32 activation rows at `xs`:
/// per column, a group's eight values (one 16-byte load, converted once) times each broadcast
/// activation. Each (group, row) pair is one chain of fused multiply-adds over the columns in
/// order, so a row's sums do not depend on what it is batched with.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_rows<const R: usize, const G: usize, const BF: bool>(
    w: &PackedMatrix,
    gs: [usize; G],
    xs: [*const f32; R],
) -> [[[f32; ROWS]; R]; G] {
    let k = w.k;
    // SAFETY: each group holds `k` columns of 16 bytes and each activation row `k` values (the
    // callers' checks).
    unsafe {
        let wp = gs.map(|g| w.qs.as_ptr().add(g * k * ROWS * 2));
        let load = |p: *const u8, i: usize| {
            let raw = _mm_loadu_si128(p.add(i * ROWS * 2).cast());
            if BF {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
            } else {
                _mm256_cvtph_ps(raw)
            }
        };
        let mut acc = [[_mm256_setzero_ps(); R]; G];
        for i in 0..k {
            // A group's columns are one stream of 16 bytes each: with four or more rows, ask
            // for the line 64 columns (1 KiB) ahead as each line starts, so that the memory bus
            // works while the multipliers do (f16 at 8 streams +5 %). With fewer rows the kernel
            // is bound by the bus alone and the hardware prefetcher keeps up; there the hints
            // cost 13 % at batch 1.
            if R >= 4 && i % 4 == 0 {
                for p in &wp {
                    prefetch(p.wrapping_add((i + FLOAT_AHEAD) * ROWS * 2), 1);
                }
            }
            if G == 1 {
                // Eight rows: their broadcasts would not fit in registers beside the sums.
                let wv = load(wp[0], i);
                for (a, acc) in acc[0].iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(wv, _mm256_set1_ps(*xs[a].add(i)), *acc);
                }
            } else {
                let xb: [__m256; R] = std::array::from_fn(|a| _mm256_set1_ps(*xs[a].add(i)));
                for (p, acc) in wp.iter().zip(&mut acc) {
                    let wv = load(*p, i);
                    for (acc, xb) in acc.iter_mut().zip(&xb) {
                        *acc = _mm256_fmadd_ps(wv, *xb, *acc);
                    }
                }
            }
        }
        acc.map(|g| g.map(lanes))
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
        let scale = hmax(amax) / 127.0;
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

/// [`super::attend_heads`] with AVX2; `head_dim` must be a multiple of 8 and `scores` is
/// `heads × visible`. Callers must have checked AVX2.
pub(super) fn attend_heads(a: &super::HeadGroup<'_>, scores: &mut [f32], out: &mut [f32]) {
    assert!(super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    let (hd, vis) = (a.head_dim, a.visible);
    let heads = a.q.len() / hd;
    let kv_end = vis.saturating_sub(1) * a.stride + hd;
    let ok = hd.is_multiple_of(8) && heads * hd == a.q.len() && out.len() == a.q.len();
    let ok = ok && scores.len() == heads * vis && (vis == 0 || (a.k.len() >= kv_end && a.v.len() >= kv_end));
    assert!(ok, "attention called with inconsistent buffers");
    // SAFETY: features asserted; the checks above bound every read and write below.
    unsafe { attend_avx2(a, heads, scores, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(a: &super::HeadGroup<'_>, heads: usize, scores: &mut [f32], out: &mut [f32]) {
    let (hd, vis) = (a.head_dim, a.visible);
    // SAFETY: rows `j < visible` of K and V hold `hd` values at `j · stride`; `q`, `out` and
    // `scores` have `heads × hd` and `heads × visible` entries (`attend_heads`).
    unsafe {
        // Scores, eight positions at a time: eight independent accumulators (one dependent
        // chain of fused multiply-adds per score was latency-bound) reduced with one transpose.
        for h in 0..heads {
            let qp = a.q.as_ptr().add(h * hd);
            let dst = scores.as_mut_ptr().add(h * vis);
            let mut j = 0;
            while j + 8 <= vis {
                let mut acc = [_mm256_setzero_ps(); 8];
                for i in (0..hd).step_by(8) {
                    let qv = _mm256_loadu_ps(qp.add(i));
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let kv = load_f16(a.k.as_ptr().add((j + t) * a.stride + i));
                        *acc = _mm256_fmadd_ps(qv, kv, *acc);
                    }
                }
                _mm256_storeu_ps(dst.add(j), _mm256_mul_ps(sum8_ps(acc), _mm256_set1_ps(a.scale)));
                j += 8;
            }
            for j in j..vis {
                let kp = a.k.as_ptr().add(j * a.stride);
                let mut acc = _mm256_setzero_ps();
                for i in (0..hd).step_by(8) {
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), load_f16(kp.add(i)), acc);
                }
                *dst.add(j) = hsum(acc) * a.scale;
            }
        }
        softmax_rows(scores, vis);
        // Weighted values, the query heads in bunches of at most four (a KV group of eight, as in
        // TinyLlama, is two bunches): every output value is the same chain whatever the bunch.
        for h in (0..heads).step_by(4) {
            let n = (heads - h).min(4);
            let (p, o) = (&scores[h * vis..(h + n) * vis], &mut out[h * hd..(h + n) * hd]);
            match n {
                1 => weighted_values::<1, 8>(a, p, o),
                2 => weighted_values::<2, 4>(a, p, o),
                3 => weighted_values::<3, 4>(a, p, o),
                _ => weighted_values::<4, 2>(a, p, o),
            }
        }
    }
}

/// The weighted values of attention for `G` query heads together (`scores`: their `G` rows of
/// weights; `out`: their `G · head_dim` outputs), `W` vectors of eight output values per head at a
/// time (`G · W` accumulators, at most 12, plus `G` broadcast weights stay in registers): each cached value is converted from f16 once for all `G` heads
/// rather than once per head, and conversions take a multiply-add's slot on this CPU
/// (BENCHMARKS.md, session 7). Every output value is the same chain of fused multiply-adds over
/// the positions in order as head by head, so the results are bit-identical.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_values<const G: usize, const W: usize>(
    a: &super::HeadGroup<'_>,
    scores: &[f32],
    out: &mut [f32],
) {
    let (hd, vis) = (a.head_dim, a.visible);
    // SAFETY: `attend_avx2` passes `G` rows of `visible` weights and `G · hd` outputs, and
    // `attend_heads` checked that V holds `visible` rows of `hd` values.
    unsafe {
        for i0 in (0..hd).step_by(8 * W) {
            let nv = ((hd - i0) / 8).min(W);
            let mut acc = [[_mm256_setzero_ps(); W]; G];
            for j in 0..vis {
                let vp = a.v.as_ptr().add(j * a.stride + i0);
                let p: [__m256; G] =
                    std::array::from_fn(|g| _mm256_set1_ps(*scores.get_unchecked(g * vis + j)));
                for t in 0..nv {
                    let v = load_f16(vp.add(8 * t));
                    for (acc, p) in acc.iter_mut().zip(&p) {
                        acc[t] = _mm256_fmadd_ps(*p, v, acc[t]);
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                for (t, acc) in acc.iter().enumerate().take(nv) {
                    _mm256_storeu_ps(out.as_mut_ptr().add(g * hd + i0 + 8 * t), *acc);
                }
            }
        }
    }
}

/// `portable::softmax_rows` with the maximum, the exponentials and the sum eight lanes at a time.
#[target_feature(enable = "avx2,fma,f16c")]
fn softmax_rows(scores: &mut [f32], visible: usize) {
    for row in scores.chunks_exact_mut(visible.max(1)) {
        let mut chunks = row.chunks_exact_mut(8);
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in &mut chunks {
            // SAFETY: an eight-value load within the chunk.
            mv = _mm256_max_ps(mv, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let max = chunks.into_remainder().iter().fold(hmax(mv), |m, &s| m.max(s));
        let (maxv, mut sum) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: an eight-value load and store within the chunk.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), maxv));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                sum = _mm256_add_ps(sum, e);
            }
        }
        let mut total = hsum(sum);
        for s in chunks.into_remainder() {
            *s = (*s - max).exp();
            total += *s;
        }
        let totalv = _mm256_set1_ps(total);
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: an eight-value load and store within the chunk.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), _mm256_div_ps(_mm256_loadu_ps(c.as_ptr()), totalv)) };
        }
        for s in chunks.into_remainder() {
            *s /= total;
        }
    }
}

/// Eight f16 values at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(p: *const half::f16) -> __m256 {
    // SAFETY: the caller guarantees eight readable values at `p` (`f16` is a `u16`).
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

/// [`super::append_f16`] with F16C. Callers must have checked AVX2, FMA and F16C.
pub(super) fn append_f16(dst: &mut Vec<half::f16>, src: &[f32]) {
    assert!(super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    let start = dst.len();
    dst.resize(start + src.len(), half::f16::ZERO);
    // SAFETY: features asserted.
    unsafe { to_f16_avx2(src, &mut dst[start..]) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn to_f16_avx2(src: &[f32], out: &mut [half::f16]) {
    let mut chunks = src.chunks_exact(8);
    for (c, o) in (&mut chunks).zip(out.chunks_exact_mut(8)) {
        // SAFETY: an eight-float load from `c` and a 16-byte store into `o`, both exactly eight
        // values long.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(c.as_ptr()));
            _mm_storeu_si128(o.as_mut_ptr().cast(), h);
        }
    }
    let rest = chunks.remainder();
    for (o, &v) in out[src.len() - rest.len()..].iter_mut().zip(rest) {
        *o = half::f16::from_f32(v);
    }
}

/// `x = eˣ` elementwise. Callers must have checked AVX2.
pub(super) fn exp_in_place(x: &mut [f32]) {
    assert!(super::has_avx2(), "AVX2 kernels on a CPU without AVX2");
    // SAFETY: features asserted.
    unsafe { exp_in_place_avx2(x) }
}

// The loop lives in a function compiled for AVX2 so that the intrinsics inline; called from a
// plain function, each load and store was a call.
#[target_feature(enable = "avx2,fma,f16c")]
fn exp_in_place_avx2(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: an eight-value load and store within the chunk.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr()))) };
    }
    for v in chunks.into_remainder() {
        *v = v.exp();
    }
}

/// eˣ for eight lanes: `x = n·ln 2 + r` with |r| ≤ ln 2 / 2, eʳ by Cephes' `expf` polynomial,
/// 2ⁿ built in the exponent bits. Inputs are clamped to ±87.3 (the normal range of f32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(87.3));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // ln 2 in two parts, so `n · ln2_hi` is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
}

/// The largest of `v`'s eight lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
