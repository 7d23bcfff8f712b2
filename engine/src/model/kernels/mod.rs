//! CPU matmul kernels for the weight formats that carry a served model: Q8_0, the 4- and 5-bit
//! block quants (Q4_0, Q4_1, Q5_0, Q5_1), the K-quants Q4_K, Q5_K and Q6_K (see `kquant`), and
//! f16/bf16. Q2_K and Q3_K have no kernel here and still go through candle.
//!
//! Why our own and not candle's `QMatMul`: on x86 without AVX-512 VNNI, candle 0.11 computes one
//! dot product per (activation row, weight row) pair, so a decode step over 8 sequences streams
//! every weight block 8 times, and its Q4_1/Q5_x paths are scalar. Here each weight block is
//! loaded once and used against several activation rows while it sits in cache, the activations
//! are quantized once per matmul, and weight rows are split across threads.
//!
//! Layout ([`PackedMatrix`]): the 32-value block formats interleave eight weight rows, so one
//! vector instruction computes partial dots of eight rows and their scales (f16, apart from the
//! quants) convert with one instruction. The arithmetic is llama.cpp's: activations become
//! Q8_0 blocks (32 values, one f32 scale); a 4/5-bit weight `d·q + mn` (q unsigned; Q4_0 and
//! Q5_0 have `mn = −8d` and `−16d`) dots as `d·dx·Σ q·xq + mn·dx·Σ xq`. K-quants use Q8_K
//! activations instead (256 values per scale, with sums per 16), as llama.cpp does.

mod kquant;
mod out;
mod pack;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use half::f16;

pub(crate) use kquant::QuantActsK;
use out::{Columns, fill_columns};
pub(crate) use pack::{PackedMatrix, ROWS};

/// Values per quantization block.
pub(crate) const BLOCK: usize = 32;

/// How the weights of a [`PackedMatrix`] are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Signed 8-bit quants, one scale per block.
    Q8,
    /// Unsigned 4-bit quants (two per byte: element `j` low nibble, `j + 16` high), a scale and
    /// a minimum per block.
    Q4,
    /// As [`Format::Q4`] plus a fifth bit per value (one `u32` per block).
    Q5,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Q4_K: 256-value super-blocks of 4-bit quants with 6-bit sub-scales and minimums.
    Q4K,
    /// Q5_K: as [`Format::Q4K`] plus a fifth bit per value.
    Q5K,
    /// Q6_K: 256-value super-blocks of 6-bit quants with 8-bit scales per 16 values.
    Q6K,
}

impl Format {
    /// The format our kernels use for a GGML dtype, if they handle it.
    pub(crate) fn for_dtype(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(Format::Q8),
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => Some(Format::Q4),
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => Some(Format::Q5),
            GgmlDType::F16 => Some(Format::F16),
            GgmlDType::BF16 => Some(Format::Bf16),
            GgmlDType::Q4K => Some(Format::Q4K),
            GgmlDType::Q5K => Some(Format::Q5K),
            GgmlDType::Q6K => Some(Format::Q6K),
            _ => None,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Format::F16 | Format::Bf16)
    }

    /// Whether the format has 256-value super-blocks and takes Q8_K activations.
    fn is_k(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }
}

/// `m` activation rows quantized to Q8_0 blocks.
pub(crate) struct QuantActs {
    /// `m × k` quants.
    pub qs: Vec<i8>,
    /// Scales, `k/32` per row.
    pub d: Vec<f32>,
    /// Block sums `d · Σ q` (for the minimum term of 4/5-bit weights), laid out as `d`.
    pub s: Vec<f32>,
    /// The integer sums `Σ q`, laid out as `d` (the AVX-512 VNNI Q8_0 kernel offsets the weights
    /// by 128 to make them unsigned and takes `128 · Σ q` back off).
    pub qsum: Vec<i32>,
}

impl QuantActs {
    /// Quantizes rows of `k` values (`k` a multiple of 32) as llama.cpp's `quantize_row_q8_0` does
    /// on AVX2: scale = max |x| / 127 (kept at f16 precision), round half to even.
    pub(crate) fn new(x: &[f32], k: usize) -> Self {
        debug_assert!(k.is_multiple_of(BLOCK));
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / BLOCK];
        let mut s = vec![0f32; x.len() / BLOCK];
        let mut qsum = vec![0i32; x.len() / BLOCK];
        let simd = has_avx2();
        for (i, (src, dst)) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)).enumerate() {
            let (Ok(src), Ok(dst)) = (<&[f32; BLOCK]>::try_from(src), <&mut [i8; BLOCK]>::try_from(dst))
            else {
                continue;
            };
            let (scale, sum) = if simd {
                #[cfg(target_arch = "x86_64")]
                {
                    x86::quantize_block(src, dst)
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    portable::quantize_block(src, dst)
                }
            } else {
                portable::quantize_block(src, dst)
            };
            let scale = half::f16::from_f32(scale).to_f32();
            d[i] = scale;
            s[i] = scale * sum as f32;
            qsum[i] = sum;
        }
        Self { qs, d, s, qsum }
    }
}

/// A set of CPU kernels: one code path per instruction-set level, chosen once per process by
/// [`KernelSet::active`] from the CPU's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// Plain Rust: any CPU (ARM included), and the reference the SIMD sets are tested against.
    Portable,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// [`KernelSet::Avx2`] plus AVX-512 F, BW, VL and VNNI: the integer dots of the quantized
    /// formats with `vpdpbusd` on 256-bit vectors; f16/bf16, attention and the rest as `Avx2`.
    Avx512Vnni,
}

impl KernelSet {
    /// The label `bitscale_engine_info{kernels}` and the start-up log use.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Portable => "portable",
            KernelSet::Avx2 => "avx2",
            KernelSet::Avx512Vnni => "avx512vnni",
        }
    }

    /// The set called `name` ([`KernelSet::name`]), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        [KernelSet::Portable, KernelSet::Avx2, KernelSet::Avx512Vnni]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// Whether this CPU can run the set.
    pub fn supported(self) -> bool {
        match self {
            KernelSet::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx512Vnni => {
                KernelSet::Avx2.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every SIMD set this CPU can run, lowest first (the tests run each against `Portable`).
    pub fn supported_simd() -> Vec<Self> {
        [KernelSet::Avx2, KernelSet::Avx512Vnni]
            .into_iter()
            .filter(|s| s.supported())
            .collect()
    }

    /// The set every kernel of this process runs: the best the CPU supports, or the one named by
    /// `BITSCALE_KERNELS` (`portable`, `avx2`, `avx512vnni`: to compare sets on one machine) when
    /// the CPU supports it; a set the CPU lacks is ignored (the start-up log names the set run).
    pub fn active() -> Self {
        static SET: OnceLock<KernelSet> = OnceLock::new();
        *SET.get_or_init(|| {
            let forced = std::env::var("BITSCALE_KERNELS").ok();
            match forced.as_deref().and_then(Self::from_name) {
                Some(set) if set.supported() => set,
                _ => Self::best_supported(),
            }
        })
    }

    fn best_supported() -> Self {
        [KernelSet::Avx512Vnni, KernelSet::Avx2]
            .into_iter()
            .find(|s| s.supported())
            .unwrap_or(KernelSet::Portable)
    }

    /// Features of this CPU that a faster set would use but the active set does not (AVX-512
    /// VNNI when a lower set runs, AVX-VNNI and AMX, for which no set exists yet), for the
    /// start-up log.
    pub fn unused_features() -> Vec<&'static str> {
        let mut found = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512vnni") && Self::active() != KernelSet::Avx512Vnni {
                found.push("avx512_vnni");
            }
            if std::is_x86_feature_detected!("avxvnni") {
                found.push("avx_vnni");
            }
            // AMX detection is not stable in `std`; Linux lists it among the flags.
            let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let first = flags.lines().find(|l| l.starts_with("flags")).unwrap_or("");
            if first.split_whitespace().any(|f| f == "amx_int8") {
                found.push("amx_int8");
            }
        }
        found
    }
}

/// Whether the active set has AVX2 + FMA + F16C (`Avx2`, and `Avx512Vnni` above it): the
/// kernels without a VNNI variant (floats, attention, quantization) run their AVX2 code.
fn has_avx2() -> bool {
    matches!(KernelSet::active(), KernelSet::Avx2 | KernelSet::Avx512Vnni)
}

/// Which implementation [`matmul`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The process's [`KernelSet::active`].
    Best,
    /// Plain Rust, any CPU (also the tests' reference).
    Portable,
    /// A given set, which the CPU must support (tests and timings compare sets).
    #[cfg_attr(not(test), expect(dead_code, reason = "only tests and timings pick a set"))]
    Set(KernelSet),
}

impl Isa {
    fn kernel_set(self) -> KernelSet {
        match self {
            Isa::Best => KernelSet::active(),
            Isa::Portable => KernelSet::Portable,
            Isa::Set(set) => {
                assert!(set.supported(), "kernel set {} on a CPU without it", set.name());
                set
            }
        }
    }
}

/// Activations in the form a format's kernel reads.
pub(crate) enum Acts<'a> {
    Float(&'a [f32]),
    Quant(QuantActs),
    QuantK(QuantActsK),
}

/// Computes `y = x Wᵀ` for `m` rows of `x` (`m × k`); returns `m × n`.
pub(crate) fn matmul(w: &PackedMatrix, x: &[f32], m: usize, isa: Isa) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    debug_assert_eq!(x.len(), m * k);
    let acts = if w.format.is_float() {
        Acts::Float(x)
    } else if w.format.is_k() {
        Acts::QuantK(QuantActsK::new(x, k))
    } else {
        Acts::Quant(QuantActs::new(x, k))
    };
    let set = isa.kernel_set();
    // Weight rows are split across threads in whole interleaved groups; each task writes its
    // columns of every activation row straight into the output (tiles copied into place
    // afterwards were 5–9 % of a decode step over 8 sequences, with their allocation and zeroing).
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = n.div_ceil(threads * 4).max(16).next_multiple_of(ROWS);
    fill_columns(m, n, rows_per_task, |out| match set {
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx2 | KernelSet::Avx512Vnni => x86::rows(w, &acts, out, set),
        _ => portable::rows(w, &acts, out),
    })
}

/// `a · b` (RMS norm), with AVX2 when the CPU has it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return x86::dot(a, b);
    }
    portable::dot(a, b)
}

/// Causal attention of the query heads that share one KV head, for one row: `q` holds those
/// heads (`head_dim` each, side by side), `k` and `v` the cached positions the row sees (row `j`
/// at `j · stride`, `head_dim` values, f16 as the cache stores them). Writes the heads' outputs
/// to `out` (shaped as `q`); `scores` is scratch space. Softmax is exact (max subtracted), scores
/// scaled by `scale`; products and sums are f32.
pub(crate) struct HeadGroup<'a> {
    pub q: &'a [f32],
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub stride: usize,
    pub head_dim: usize,
    pub visible: usize,
    pub scale: f32,
}

/// Runs [`HeadGroup`] attention into `out`, with AVX2 when the CPU has it.
pub(crate) fn attend_heads(a: &HeadGroup<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let heads = a.q.len() / a.head_dim.max(1);
    scores.clear();
    scores.resize(heads * a.visible, 0.0);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && a.head_dim.is_multiple_of(8) {
        return x86::attend_heads(a, scores, out);
    }
    portable::attend_heads(a, scores, out);
}

/// Appends `src` to `dst` rounded to f16 (to nearest, ties to even), with F16C when the CPU has
/// it; both paths round alike.
pub(crate) fn append_f16(dst: &mut Vec<f16>, src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return x86::append_f16(dst, src);
    }
    dst.extend(src.iter().map(|&v| f16::from_f32(v)));
}

/// `x = eˣ` elementwise (AVX2: a degree-6 polynomial after range reduction, within 2 ulp of
/// `f32::exp` over the range softmax and SiLU use).
pub(crate) fn exp_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return x86::exp_in_place(x);
    }
    for v in x {
        *v = v.exp();
    }
}

/// `silu(gate) · up` for rows laid out as `[gate | up]`, each half `ffn` wide.
pub(crate) fn swiglu(gate_up: &[f32], ffn: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * ffn) {
        let (g, u) = row.split_at(ffn);
        let start = out.len();
        out.extend(g.iter().map(|&g| -g));
        let e = &mut out[start..];
        exp_in_place(e);
        for ((e, &g), &u) in e.iter_mut().zip(g).zip(u) {
            *e = g / (1.0 + *e) * u;
        }
    }
    out
}

#[cfg(test)]
mod tests;
