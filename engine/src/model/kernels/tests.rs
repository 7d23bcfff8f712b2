//! The packed kernels against candle's dequantized weights in f32, for every format, odd batch
//! sizes and row lengths that leave a partial group of eight blocks.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::{Isa, PackedMatrix, matmul};

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `x Wᵀ` with W dequantized to f32, in f64.
fn reference(w: &[f32], x: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|i| f64::from(w[j * k + i]) * f64::from(x[r * k + i]))
                .sum();
            y[r * n + j] = s as f32;
        }
    }
    y
}

fn packed(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (PackedMatrix, Vec<f32>) {
    let w = Tensor::from_vec(random(n * k, seed), (n, k), &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&w, dtype).expect("quantize");
    let deq = q
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("dequantize");
    let bytes = q.data().expect("bytes");
    (PackedMatrix::from_ggml(dtype, &bytes, n, k).expect("pack"), deq)
}

const FORMATS: [GgmlDType; 7] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::F16,
    GgmlDType::BF16,
];

#[test]
fn every_format_matches_the_dequantized_reference() {
    // 576 = 18 blocks: two full groups of eight plus two; 13 rows exercise the 8/4/1 row groups.
    for (dtype, (n, k)) in FORMATS.into_iter().flat_map(|d| [(d, (37, 576)), (d, (70, 64))]) {
        let (w, deq) = packed(dtype, n, k, 1);
        for m in [1, 2, 3, 8, 13] {
            let x = random(m * k, 2 + m as u64);
            let want = reference(&deq, &x, n, k, m);
            let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt() / (want.len() as f32).sqrt();
            for isa in [Isa::Best, Isa::Portable] {
                let got = matmul(&w, &x, m, isa);
                // Activations are quantized to 8 bits, as in llama.cpp: ~1% of the typical output.
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let tol = if matches!(dtype, GgmlDType::F16 | GgmlDType::BF16) {
                    1e-4
                } else {
                    0.03
                };
                assert!(
                    err <= tol * norm.max(1.0),
                    "{dtype:?} n={n} k={k} m={m} {isa:?}: max error {err} vs rms {norm}"
                );
            }
        }
    }
}

#[test]
fn simd_and_portable_agree_closely() {
    for dtype in FORMATS {
        let (w, _) = packed(dtype, 19, 320, 5);
        let x = random(9 * 320, 6);
        let a = matmul(&w, &x, 9, Isa::Best);
        let b = matmul(&w, &x, 9, Isa::Portable);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{dtype:?}: {u} vs {v}");
        }
    }
}

#[test]
fn rows_dequantize_exactly_as_candle_does() {
    for dtype in FORMATS {
        let (w, deq) = packed(dtype, 5, 96, 9);
        for i in 0..5 {
            assert_eq!(w.row(i), deq[i * 96..(i + 1) * 96], "{dtype:?} row {i}");
        }
    }
}

#[test]
fn a_batch_row_gets_the_same_result_as_alone() {
    // 13 rows run as groups of 8, 4 and 1; each row must come out bit for bit as when alone.
    for dtype in FORMATS {
        let (w, _) = packed(dtype, 33, 576, 3);
        let x = random(13 * 576, 4);
        for isa in [Isa::Best, Isa::Portable] {
            let batch = matmul(&w, &x, 13, isa);
            for r in 0..13 {
                let alone = matmul(&w, &x[r * 576..(r + 1) * 576], 1, isa);
                assert_eq!(alone, batch[r * 33..(r + 1) * 33], "{dtype:?} {isa:?} row {r}");
            }
        }
    }
}

#[test]
fn refuses_unsupported_or_misshapen_input() {
    assert!(PackedMatrix::from_ggml(GgmlDType::Q4K, &[0; 144], 1, 256).is_err());
    assert!(PackedMatrix::from_ggml(GgmlDType::Q8_0, &[0; 33], 1, 32).is_err());
    assert!(PackedMatrix::from_ggml(GgmlDType::Q8_0, &[0; 34], 1, 48).is_err());
}

#[test]
fn simd_quantization_matches_portable() {
    let x = random(64 * 32, 11);
    for block in x.chunks_exact(32) {
        let src: &[f32; 32] = block.try_into().expect("block");
        let (mut a, mut b) = ([0i8; 32], [0i8; 32]);
        let pa = super::portable::quantize_block(src, &mut a);
        #[cfg(target_arch = "x86_64")]
        if super::has_avx2() {
            let pb = super::x86::quantize_block(src, &mut b);
            assert_eq!((pa, a), (pb, b));
        }
        let _ = &mut b;
    }
}

#[test]
fn planned_bytes_are_the_packed_bytes() {
    for (dtype, (n, k)) in FORMATS
        .into_iter()
        .flat_map(|d| [(d, (37, 576)), (d, (70, 64)), (d, (8, 256))])
    {
        let (w, _) = packed(dtype, n, k, 3);
        let format = super::Format::for_dtype(dtype).expect("format");
        assert_eq!(
            PackedMatrix::bytes_for(format, n, k),
            w.bytes(),
            "{dtype:?} {n}×{k}"
        );
    }
}
