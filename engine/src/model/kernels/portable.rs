//! Plain-Rust kernels: any CPU, and the reference the SIMD ones are tested against.

use super::{Acts, BLOCK, Columns, Format, PackedMatrix};

/// Fills `out`'s columns (weight rows `out.j0()..`) of every activation row.
pub(super) fn rows(w: &PackedMatrix, acts: &Acts<'_>, out: &mut Columns<'_>) {
    let (j0, width) = (out.j0(), out.width());
    let mut dst = vec![0f32; width];
    for r in 0..out.m() {
        for (jj, y) in dst.iter_mut().enumerate() {
            let j = j0 + jj;
            *y = match acts {
                Acts::Float(x) => float_row(w, j, &x[r * w.k..(r + 1) * w.k]),
                Acts::Quant(q) => quant_row(w, j, q, r),
                Acts::QuantK(q) => super::kquant::row_dot(w, j, q, r),
            };
        }
        out.put(r, 0, &dst);
    }
}

/// Quantizes one block of 32 values to `dst` and returns `(scale, Σ q)`: scale = max |x| / 127,
/// round half to even (what the AVX2 path's `vroundps` does).
pub(super) fn quantize_block(src: &[f32; BLOCK], dst: &mut [i8; BLOCK]) -> (f32, i32) {
    let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in dst.iter_mut().zip(src) {
        // Saturating float→int cast; |v·inv| ≤ 127 by construction.
        *q = (v * inv).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    (scale, sum)
}

fn float_row(w: &PackedMatrix, j: usize, x: &[f32]) -> f32 {
    x.iter().enumerate().map(|(c, &v)| w.float(j, c) * v).sum()
}

fn quant_row(w: &PackedMatrix, j: usize, x: &super::QuantActs, r: usize) -> f32 {
    let k = w.k;
    let nb = k / BLOCK;
    let (mut acc, mut mins) = (0f32, 0f32);
    for b in 0..nb {
        let xq = &x.qs[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
        let (dx, sx) = (x.d[r * nb + b], x.s[r * nb + b]);
        let dot: i32 = xq
            .iter()
            .enumerate()
            .map(|(e, &c)| i32::from(w.quant(j, b, e)) * i32::from(c))
            .sum();
        acc = (dot as f32).mul_add(w.scale(j, b) * dx, acc);
        if w.format != Format::Q8 {
            mins = w.min(j, b).mul_add(sx, mins);
        }
    }
    acc + mins
}

/// Dot product written so the compiler vectorizes it (8 independent accumulators).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`super::attend_heads`] in plain Rust; `scores` is `heads × visible`.
pub(super) fn attend_heads(a: &super::HeadGroup<'_>, scores: &mut [f32], out: &mut [f32]) {
    let (hd, vis) = (a.head_dim, a.visible);
    for (h, row) in scores.chunks_exact_mut(vis.max(1)).enumerate() {
        let q = &a.q[h * hd..(h + 1) * hd];
        for (j, s) in row.iter_mut().enumerate() {
            let k = &a.k[j * a.stride..j * a.stride + hd];
            *s = q.iter().zip(k).map(|(&q, &k)| q * k.to_f32()).sum::<f32>() * a.scale;
        }
    }
    softmax_rows(scores, vis);
    for (h, o) in out.chunks_exact_mut(hd).enumerate() {
        o.fill(0.0);
        for (j, &p) in scores[h * vis..(h + 1) * vis].iter().enumerate() {
            axpy(o, p, &a.v[j * a.stride..j * a.stride + hd]);
        }
    }
}

/// Turns each head's row of `scores` (`visible` long) into softmax probabilities.
fn softmax_rows(scores: &mut [f32], visible: usize) {
    for row in scores.chunks_exact_mut(visible.max(1)) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        for s in row.iter_mut() {
            *s -= max;
        }
        super::exp_in_place(row);
        let sum: f32 = row.iter().sum();
        for s in row.iter_mut() {
            *s /= sum;
        }
    }
}

/// `y += a * x`.
fn axpy(y: &mut [f32], a: f32, x: &[half::f16]) {
    for (d, &s) in y.iter_mut().zip(x) {
        *d += a * s.to_f32();
    }
}
