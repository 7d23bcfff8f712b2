//! Plain-Rust kernels: any CPU, and the reference the SIMD ones are tested against.

use half::{bf16, f16};

use super::{Acts, BLOCK, Format, PackedMatrix};

/// Fills `out` (`rows × m`, transposed) with weight rows `j0..j0 + rows` dotted with every
/// activation row.
pub(super) fn rows(w: &PackedMatrix, acts: &Acts<'_>, m: usize, j0: usize, rows: usize, out: &mut [f32]) {
    for (jj, col) in out.chunks_exact_mut(m).enumerate().take(rows) {
        let j = j0 + jj;
        for (r, y) in col.iter_mut().enumerate() {
            *y = match acts {
                Acts::Float(x) => float_row(w, j, &x[r * w.k..(r + 1) * w.k]),
                Acts::Quant(q) => quant_row(w, j, q, r),
            };
        }
    }
}

fn float_row(w: &PackedMatrix, j: usize, x: &[f32]) -> f32 {
    let k = w.k;
    let bits = w.qs[2 * j * k..2 * (j + 1) * k].chunks_exact(2);
    let to_f32: fn(u16) -> f32 = match w.format {
        Format::Bf16 => |b| bf16::from_bits(b).to_f32(),
        _ => |b| f16::from_bits(b).to_f32(),
    };
    bits.zip(x)
        .map(|(b, &v)| to_f32(u16::from_le_bytes([b[0], b[1]])) * v)
        .sum()
}

fn quant_row(w: &PackedMatrix, j: usize, x: &super::QuantActs, r: usize) -> f32 {
    let k = w.k;
    let nb = k / BLOCK;
    let sc = |v: &[u16], b: usize| f16::from_bits(v[j * w.scale_stride + b]).to_f32();
    let mut acc = 0f32;
    for b in 0..nb {
        let xq = &x.qs[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
        let (dx, sx) = (x.d[r * nb + b], x.s[r * nb + b]);
        match w.format {
            Format::Q8 => {
                let wq = &w.qs[j * k + b * BLOCK..j * k + (b + 1) * BLOCK];
                let dot: i32 = wq
                    .iter()
                    .zip(xq)
                    .map(|(&a, &c)| i32::from(a as i8) * i32::from(c))
                    .sum();
                acc += sc(&w.d, b) * dx * dot as f32;
            }
            Format::Q4 | Format::Q5 => {
                let at = (j * nb + b) * BLOCK / 2;
                let qs = &w.qs[at..at + BLOCK / 2];
                let hi = w.qh.get(j * nb + b).copied().unwrap_or(0);
                let mut dot = 0i32;
                for (i, &c) in xq.iter().enumerate() {
                    let nib = if i < 16 { qs[i] & 0x0F } else { qs[i - 16] >> 4 };
                    let q = nib | ((((hi >> i) & 1) as u8) << 4);
                    dot += i32::from(q) * i32::from(c);
                }
                acc += sc(&w.d, b) * dx * dot as f32 + sc(&w.mn, b) * sx;
            }
            Format::F16 | Format::Bf16 => {}
        }
    }
    acc
}
