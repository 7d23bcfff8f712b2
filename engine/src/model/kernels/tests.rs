//! The packed kernels against candle's dequantized weights in f32, for every format, odd batch
//! sizes and row lengths that leave a partial group of eight blocks (or K-quant super-blocks).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::{Isa, KernelSet, PackedMatrix, matmul};

/// The portable path and every SIMD set this CPU supports: each test runs all of them, so the
/// portable path stays tested on x86, and a set the CPU lacks is skipped, not failed.
fn all_paths() -> Vec<Isa> {
    std::iter::once(Isa::Portable)
        .chain(KernelSet::supported_simd().into_iter().map(Isa::Set))
        .collect()
}

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

const FORMATS: [GgmlDType; 10] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

fn is_k(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
}

/// A row length for `dtype` that is `blocks32` blocks of 32, or that many super-blocks of 256
/// for K-quants.
fn row_len(dtype: GgmlDType, blocks32: usize) -> usize {
    if is_k(dtype) {
        blocks32 * 256
    } else {
        blocks32 * 32
    }
}

#[test]
fn every_format_matches_the_dequantized_reference() {
    // 18 blocks (K-quants: 10 super-blocks): full groups of eight plus a partial one; 13 rows
    // exercise the 8/4/1 row groups.
    let shapes = |d| {
        let long = if is_k(d) { 10 } else { 18 };
        [(d, (37, row_len(d, long))), (d, (70, row_len(d, 2)))]
    };
    for (dtype, (n, k)) in FORMATS.into_iter().flat_map(shapes) {
        let (w, deq) = packed(dtype, n, k, 1);
        for m in [1, 2, 3, 8, 13] {
            let x = random(m * k, 2 + m as u64);
            let want = reference(&deq, &x, n, k, m);
            let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt() / (want.len() as f32).sqrt();
            for isa in all_paths() {
                let got = matmul(&w, &x, m, isa);
                // Activations are quantized to 8 bits, as in llama.cpp: ~1% of the typical output
                // (Q8_K's one scale per 256 values is coarser than Q8_0's per 32, still ≤ 3%).
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
        let k = row_len(dtype, 10);
        let (w, _) = packed(dtype, 19, k, 5);
        let x = random(9 * k, 6);
        let b = matmul(&w, &x, 9, Isa::Portable);
        for set in KernelSet::supported_simd() {
            let a = matmul(&w, &x, 9, Isa::Set(set));
            for (u, v) in a.iter().zip(&b) {
                let set = set.name();
                assert!(
                    (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                    "{dtype:?} {set}: {u} vs {v}"
                );
            }
        }
    }
}

/// The quantized formats' integer sums are exact and every path adds them to a row's sum in the
/// same order with the same fused multiply-adds, so all paths agree bit for bit: on rows of
/// multiples of 256 (the served models' shapes) and not, one and eight activation rows a pass and
/// batches that mix pass sizes.
#[test]
fn quantized_simd_and_portable_agree_exactly() {
    let quantized = FORMATS
        .into_iter()
        .filter(|d| !matches!(d, GgmlDType::F16 | GgmlDType::BF16));
    for dtype in quantized {
        let shapes: &[(usize, usize, usize)] = if is_k(dtype) {
            &[
                (19, 2560, 9),
                (40, 1536, 1),
                (9, 256, 16),
                (24, 2048, 8),
                (33, 2048, 1),
            ]
        } else {
            &[
                (19, 320, 9),
                (40, 576, 1),
                (9, 32, 16),
                (24, 2048, 8),
                (33, 2048, 1),
            ]
        };
        for &(n, k, m) in shapes {
            let (w, _) = packed(dtype, n, k, 7);
            let x = random(m * k, 8);
            let want = matmul(&w, &x, m, Isa::Portable);
            for set in KernelSet::supported_simd() {
                let set = set.name();
                let got = matmul(&w, &x, m, Isa::Set(KernelSet::from_name(set).expect("set")));
                assert_eq!(got, want, "{dtype:?} {set} n={n} k={k} m={m}");
            }
        }
    }
}

/// The AVX-512 VNNI set where the CPU has it: its kernels against the portable path (the tests
/// above also run it); elsewhere this says it was skipped rather than failing.
#[test]
fn avx512_vnni_set_runs_where_the_cpu_has_it() {
    let set = KernelSet::Avx512Vnni;
    if !set.supported() {
        eprintln!("skipped: this CPU lacks AVX-512 F/BW/VL/VNNI");
        return;
    }
    assert_eq!(KernelSet::from_name("avx512vnni"), Some(set));
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
        let k = 2048;
        let (w, _) = packed(dtype, 64, k, 21);
        for m in [1, 8] {
            let x = random(m * k, 22);
            assert_eq!(
                matmul(&w, &x, m, Isa::Set(set)),
                matmul(&w, &x, m, Isa::Portable),
                "{dtype:?} m={m}"
            );
        }
    }
}

#[test]
fn rows_dequantize_exactly_as_candle_does() {
    for dtype in FORMATS {
        let k = row_len(dtype, 3);
        let (w, deq) = packed(dtype, 5, k, 9);
        for i in 0..5 {
            assert_eq!(w.row(i), deq[i * k..(i + 1) * k], "{dtype:?} row {i}");
        }
    }
}

#[test]
fn a_batch_row_gets_the_same_result_as_alone() {
    // 13 rows run as groups of 8, 4 and 1; each row must come out bit for bit as when alone.
    for dtype in FORMATS {
        let k = row_len(dtype, if is_k(dtype) { 10 } else { 18 });
        let (w, _) = packed(dtype, 33, k, 3);
        let x = random(13 * k, 4);
        for isa in all_paths() {
            let batch = matmul(&w, &x, 13, isa);
            for r in 0..13 {
                let alone = matmul(&w, &x[r * k..(r + 1) * k], 1, isa);
                assert_eq!(alone, batch[r * 33..(r + 1) * 33], "{dtype:?} {isa:?} row {r}");
            }
        }
    }
}

#[test]
fn refuses_unsupported_or_misshapen_input() {
    assert!(PackedMatrix::from_ggml(GgmlDType::Q3K, &[0; 110], 1, 256).is_err());
    assert!(PackedMatrix::from_ggml(GgmlDType::Q4K, &[0; 144], 1, 288).is_err());
    assert!(PackedMatrix::from_ggml(GgmlDType::Q6K, &[0; 209], 1, 256).is_err());
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
fn simd_q8k_quantization_matches_portable() {
    let mut x = random(6 * 256, 13);
    x[256..512].fill(0.0);
    // Ties for the largest magnitude (the first one sets the sign) and values on half steps.
    x[512 + 3] = -9.0;
    x[512 + 200] = 9.0;
    x[768 + 7] = 4.0;
    x[768 + 9] = -4.0;
    x[768 + 10] = 1.0;
    x[1024..1280]
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i as f32 - 128.0) / 2.0);
    for block in x.chunks_exact(256) {
        let src: &[f32; 256] = block.try_into().expect("block");
        let mut a = [0i8; 256];
        let da = super::kquant::quantize_super_block(src, &mut a);
        #[cfg(target_arch = "x86_64")]
        if super::has_avx2() {
            let mut b = [1i8; 256];
            let db = super::x86::quantize_super_block(src, &mut b);
            assert_eq!((da.to_bits(), a), (db.to_bits(), b));
        }
    }
}

#[test]
fn q8k_activations_round_to_nearest_and_sum_per_16() {
    let mut x = random(3 * 512, 12);
    x[256..512].fill(0.0);
    let q = super::QuantActsK::new(&x, 512);
    for (b, src) in x.chunks_exact(256).enumerate() {
        let (qs, dx) = (&q.qs[b * 256..(b + 1) * 256], q.d[b]);
        if b == 1 {
            assert!(
                dx == 0.0 && qs.iter().all(|&v| v == 0),
                "an all-zero block stays zero"
            );
            continue;
        }
        // llama.cpp's convention: the value of largest magnitude becomes −128 (or 128, clamped to
        // 127, when it is negative: off by one step); the others round to the nearest step.
        assert!(qs.contains(&-128) || qs.contains(&127), "block {b}");
        for (&v, &s) in qs.iter().zip(src) {
            let tol = if v == 127 { 1.0001 } else { 0.5001 };
            assert!(
                (f32::from(v) * dx - s).abs() <= dx.abs() * tol,
                "block {b}: {v}·{dx} vs {s}"
            );
        }
        for (g, &sum) in q.bsums[b * 16..(b + 1) * 16].iter().enumerate() {
            let want: i16 = qs[g * 16..(g + 1) * 16].iter().map(|&v| i16::from(v)).sum();
            assert_eq!(sum, want, "block {b} sum {g}");
        }
    }
}

/// Timing, not a check: `cargo test --release -p bitscale-engine -- --ignored --nocapture
/// kernel_timing` prints µs per matmul for SmolLM2's `ffn_down` shape (576 × 1536), ours on one
/// rayon thread against candle's `QMatMul` (candle's own pool; run with `CANDLE_NUM_THREADS=1`).
#[test]
#[ignore = "timing"]
fn kernel_timing() {
    // `BITSCALE_KERNEL_THREADS` (1) sets the threads, `BITSCALE_KERNEL_SHAPES=tinyllama` the 1.1B
    // shapes; `BITSCALE_KERNEL_CANDLE=0` skips candle's timing, `BITSCALE_KERNEL_ONLY=Q4K,Q8_0`
    // times only those formats, `BITSCALE_KERNEL_M=1,8` (the default) the activation rows,
    // `BITSCALE_KERNEL_SETS=avx2,avx512vnni` those kernel sets one after the other (default: the
    // process's active set).
    use candle_core::Module;
    use candle_core::quantized::QMatMul;
    let threads = std::env::var("BITSCALE_KERNEL_THREADS").map_or(1, |v| v.parse().expect("a thread count"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let shapes = if std::env::var("BITSCALE_KERNEL_SHAPES").as_deref() == Ok("tinyllama") {
        // TinyLlama-1.1B: fused gate+up, ffn_down (both a layer's largest) and the output head.
        vec![
            (GgmlDType::Q4K, 11264, 2048),
            (GgmlDType::Q5K, 11264, 2048),
            (GgmlDType::Q6K, 11264, 2048),
            (GgmlDType::Q8_0, 11264, 2048),
            (GgmlDType::Q5_0, 11264, 2048),
            (GgmlDType::Q4K, 2048, 5632),
            (GgmlDType::Q8_0, 2048, 5632),
            (GgmlDType::Q6K, 32000, 2048),
        ]
    } else {
        // SmolLM2-135M shapes: ffn_down (the K-quant tensor), fused gate+up and the output head.
        vec![
            (GgmlDType::Q4K, 576, 1536),
            (GgmlDType::Q5K, 576, 1536),
            (GgmlDType::Q6K, 576, 1536),
            (GgmlDType::Q8_0, 576, 1536),
            (GgmlDType::F16, 576, 1536),
            (GgmlDType::F16, 3072, 576),
            (GgmlDType::Q5_0, 3072, 576),
            (GgmlDType::Q5_0, 960, 576),
            (GgmlDType::Q8_0, 49152, 576),
        ]
    };
    let only = std::env::var("BITSCALE_KERNEL_ONLY").unwrap_or_default();
    let wanted = |d: GgmlDType| only.is_empty() || only.split(',').any(|o| o == format!("{d:?}"));
    for (dtype, n, k) in shapes.into_iter().filter(|s| wanted(s.0)) {
        let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).expect("tensor");
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let bytes = q.data().expect("bytes");
        let p = PackedMatrix::from_ggml(dtype, &bytes, n, k).expect("pack");
        let mm = QMatMul::from_qtensor(q).expect("qmatmul");
        let ms: Vec<usize> = std::env::var("BITSCALE_KERNEL_M").map_or(vec![1, 8], |v| {
            v.split(',')
                .map(|m| m.parse().expect("BITSCALE_KERNEL_M: row counts"))
                .collect()
        });
        for m in ms {
            let x = random(m * k, 2);
            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).expect("x");
            let iters = (400 / m * 576 * 1536 / (n * k)).max(2);
            // Best of 7 runs: the machine is shared, and the minimum is the least disturbed.
            let time = |f: &dyn Fn()| {
                f();
                (0..7)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        for _ in 0..iters {
                            f();
                        }
                        t.elapsed().as_secs_f64() * 1e6 / iters as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let sets: Vec<KernelSet> =
                std::env::var("BITSCALE_KERNEL_SETS").map_or(vec![KernelSet::active()], |v| {
                    v.split(',')
                        .map(|s| KernelSet::from_name(s).expect("BITSCALE_KERNEL_SETS: kernel set names"))
                        .filter(|s| s.supported())
                        .collect()
                });
            let ours: Vec<(KernelSet, f64)> = sets
                .into_iter()
                .map(|set| {
                    let t = pool.install(|| {
                        time(&|| {
                            std::hint::black_box(matmul(&p, &x, m, Isa::Set(set)));
                        })
                    });
                    (set, t)
                })
                .collect();
            let candle = if std::env::var("BITSCALE_KERNEL_CANDLE").as_deref() == Ok("0") {
                f64::NAN
            } else {
                time(&|| {
                    std::hint::black_box(mm.forward(&xt).expect("forward"));
                })
            };
            let bytes = p.qs.len() + 4 * p.qh.len() + p.sc.len() + 2 * (p.d.len() + p.mn.len());
            let ours: Vec<String> = ours
                .iter()
                .map(|(set, t)| format!("{} {t:.0} µs ({:.1} GB/s)", set.name(), bytes as f64 / t / 1e3))
                .collect();
            println!(
                "{dtype:?} {n}x{k} m={m}: {}, candle {candle:.0} µs",
                ours.join(", ")
            );
        }
    }
}

#[test]
fn planned_bytes_are_the_packed_bytes() {
    for (dtype, (n, k)) in FORMATS
        .into_iter()
        .flat_map(|d| [(d, (37, row_len(d, 18))), (d, (70, row_len(d, 2))), (d, (8, 256))])
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

#[test]
fn attention_simd_matches_portable_and_the_softmax_definition() {
    use super::{attend_heads, portable};
    let cases = [
        (3, 64, 37, 192),
        (1, 24, 1, 24),
        (2, 128, 5, 256),
        (4, 32, 9, 128),
        (8, 64, 13, 512),
    ];
    for (heads, hd, visible, stride) in cases {
        // The cache holds f16; the definition below reads the same f16 values.
        let case = AttentionCase::new(heads, hd, visible, stride);
        let (q, k, v) = (&case.q, &case.k, &case.v);
        let a = case.group();
        let (mut scores, mut got) = (Vec::new(), vec![0f32; heads * hd]);
        attend_heads(&a, &mut scores, &mut got);
        let mut plain = vec![0f32; heads * hd];
        let mut s = vec![0f32; heads * visible];
        portable::attend_heads(&a, &mut s, &mut plain);
        // The definition, in f64.
        for h in 0..heads {
            let logits: Vec<f64> = (0..visible)
                .map(|j| {
                    (0..hd)
                        .map(|i| f64::from(q[h * hd + i]) * f64::from(k[j * stride + i].to_f32()))
                        .sum::<f64>()
                        * 0.125
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for i in 0..hd {
                let want: f64 = (0..visible)
                    .map(|j| e[j] / sum * f64::from(v[j * stride + i].to_f32()))
                    .sum();
                for (name, out) in [("simd", &got), ("portable", &plain)] {
                    let d = (f64::from(out[h * hd + i]) - want).abs();
                    assert!(
                        d < 1e-5,
                        "{name} head {h} value {i}: {} vs {want}",
                        out[h * hd + i]
                    );
                }
            }
        }
    }
}

#[test]
fn f16_appends_round_to_nearest_even_on_every_path() {
    let mut x = random(8 * 7 + 5, 14);
    // Halfway between two f16 values (ties to even), beyond f16's range, and below its normals.
    x.extend([
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        7.0e4,
        -7.0e4,
        1.0e-6,
        0.0,
    ]);
    let mut got = vec![half::f16::ONE];
    super::append_f16(&mut got, &x);
    let want: Vec<half::f16> = std::iter::once(half::f16::ONE)
        .chain(x.iter().map(|&v| half::f16::from_f32(v)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got[got.len() - 6].to_f32(), 1.0, "ties go to the even neighbour");
}

#[test]
fn exp_is_within_a_few_ulp_of_the_standard_library() {
    let mut x: Vec<f32> = (0..20_001).map(|i| -87.0 + 174.0 * i as f32 / 20_000.0).collect();
    x.extend([0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5]);
    let want: Vec<f32> = x.iter().map(|v| v.exp()).collect();
    super::exp_in_place(&mut x);
    for (got, want) in x.iter().zip(&want) {
        let rel = ((got - want) / want).abs();
        assert!(rel < 4.0 * f32::EPSILON, "e^x: {got} vs {want} (rel {rel})");
    }
}

#[test]
fn swiglu_is_silu_of_gate_times_up() {
    let ffn = 13;
    let gu = random(3 * 2 * ffn, 11)
        .iter()
        .map(|v| v * 12.0)
        .collect::<Vec<_>>();
    let got = super::swiglu(&gu, ffn);
    for (r, row) in gu.chunks_exact(2 * ffn).enumerate() {
        for i in 0..ffn {
            let (g, u) = (f64::from(row[i]), f64::from(row[ffn + i]));
            let want = g / (1.0 + (-g).exp()) * u;
            let d = (f64::from(got[r * ffn + i]) - want).abs();
            assert!(
                d <= 1e-5 * want.abs().max(1.0),
                "row {r} value {i}: {} vs {want}",
                got[r * ffn + i]
            );
        }
    }
}

/// Random queries and a random f16 cache for one row's attention (`HeadGroup`), scale 1/8.
/// The query heads of a KV group attended together give exactly what each gives alone (the
/// SIMD kernel converts a cached value once for the group; the sums must not change with it).
#[test]
fn attention_of_a_group_equals_its_heads_one_at_a_time() {
    for (heads, hd) in [(2, 128), (3, 64), (4, 32)] {
        let case = AttentionCase::new(heads, hd, 41, 2 * hd);
        let mut scores = Vec::new();
        let mut together = vec![0f32; heads * hd];
        super::attend_heads(&case.group(), &mut scores, &mut together);
        for h in 0..heads {
            let one = super::HeadGroup {
                q: &case.q[h * hd..(h + 1) * hd],
                ..case.group()
            };
            let mut alone = vec![0f32; hd];
            super::attend_heads(&one, &mut scores, &mut alone);
            assert_eq!(alone, together[h * hd..(h + 1) * hd], "{heads} heads, head {h}");
        }
    }
}

struct AttentionCase {
    q: Vec<f32>,
    k: Vec<half::f16>,
    v: Vec<half::f16>,
    stride: usize,
    head_dim: usize,
    visible: usize,
}

impl AttentionCase {
    fn new(heads: usize, head_dim: usize, visible: usize, stride: usize) -> Self {
        let cache = |seed| {
            random(visible * stride, seed)
                .into_iter()
                .map(half::f16::from_f32)
                .collect()
        };
        Self {
            q: random(heads * head_dim, 7),
            k: cache(8),
            v: cache(9),
            stride,
            head_dim,
            visible,
        }
    }

    fn group(&self) -> super::HeadGroup<'_> {
        super::HeadGroup {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            stride: self.stride,
            head_dim: self.head_dim,
            visible: self.visible,
            scale: 0.125,
        }
    }
}

/// Times one row's attention over a long cache (SmolLM2's shape: three query heads per KV head,
/// 64 values per head, KV rows 192 values apart). Run with `--ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn attention_timing() {
    use super::attend_heads;
    let (heads, hd, stride) = (3, 64, 192);
    for visible in [64, 300, 1000] {
        let case = AttentionCase::new(heads, hd, visible, stride);
        let a = case.group();
        let (mut scratch, mut out) = (Vec::new(), vec![0f32; heads * hd]);
        let iters = 200_000 / visible;
        let best = (0..7)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    attend_heads(&a, &mut scratch, &mut out);
                    std::hint::black_box(&out);
                }
                t.elapsed().as_secs_f64() * 1e6 / iters as f64
            })
            .fold(f64::INFINITY, f64::min);
        let macs = 2.0 * (heads * hd * visible) as f64;
        println!(
            "attention {heads} heads × {visible} positions: {best:.2} µs ({:.1} MAC/ns)",
            macs / best / 1e3
        );
    }
}
