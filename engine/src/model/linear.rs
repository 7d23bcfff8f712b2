//! Weight matrices and the host-side math between them.
//!
//! Activations live in plain `Vec<f32>` rows on the host. Each matmul runs once per step with every
//! batch row stacked (m = total rows): on CPU through our packed kernels (`kernels`) for Q8_0,
//! 4/5-bit, Q4_K/Q5_K/Q6_K and f16/bf16 weights, which reuse each weight block across rows; through
//! candle's `QMatMul` for the other formats (Q2_K, Q3_K, f32) and on CUDA. Everything else (norms, RoPE, attention, SwiGLU)
//! is a tight loop here: one call per matmul instead of a dozen small ops per layer per sequence.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::ModelError;
use super::kernels::{self, Format, Isa, PackedMatrix, dot};

/// One weight matrix and the code that multiplies by it.
enum Matmul {
    Packed(PackedMatrix),
    Candle(QMatMul),
}

impl Matmul {
    fn new(w: Arc<QTensor>) -> Result<Self, ModelError> {
        let (n, k) = w.shape().dims2()?;
        let dtype = w.dtype();
        if w.device().is_cpu() && packed_format(dtype).is_some() {
            let packed = PackedMatrix::from_ggml(dtype, &w.data()?, n, k)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            return Ok(Matmul::Packed(packed));
        }
        Ok(Matmul::Candle(match dtype {
            // Keep f16/bf16 weights at 2 bytes: `from_arc` would widen them to f32.
            GgmlDType::F16 | GgmlDType::BF16 => QMatMul::QTensor(w),
            _ => QMatMul::from_arc(w)?,
        }))
    }

    /// Bytes this matrix holds once serving: the packed buffers, or candle's storage plus the
    /// copy candle repacks on first use ([`candle_repack_bytes`]).
    fn bytes(&self) -> u64 {
        match self {
            Matmul::Packed(p) => p.bytes(),
            Matmul::Candle(QMatMul::QTensor(w)) => {
                // Weights are 2-D by construction (`Matmul::new` checked).
                let (n, k) = w.shape().dims2().unwrap_or((0, 0));
                w.storage_size_in_bytes() as u64 + candle_repack_bytes(w.dtype(), n, k)
            }
            Matmul::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                (t.elem_count() * t.dtype().size_in_bytes()) as u64
            }
        }
    }

    fn forward(&self, x: &[f32], m: usize, k: usize, device: &Device) -> Result<Vec<f32>, ModelError> {
        match self {
            Matmul::Packed(p) => Ok(kernels::matmul(p, x, m, isa())),
            Matmul::Candle(mm) => {
                let x = Tensor::from_slice(x, (m, k), device)?;
                Ok(mm.forward(&x)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }
}

/// The packed format a weight of `dtype` gets on CPU, or `None` when candle multiplies by it.
fn packed_format(dtype: GgmlDType) -> Option<Format> {
    Format::for_dtype(dtype).filter(|_| !candle_kernels_forced())
}

/// Bytes of the copy candle 0.11.1 builds, on a matrix's first matmul, next to the GGML storage
/// it keeps (`QTensor::repacked_qs`, `candle-core/src/quantized/repack_x86.rs` and `repack.rs`).
/// On x86 with AVX2 (`repack_x86::select`), Q4_K and Q6_K matrices with `n % 16 == 0` and
/// `k % 256 == 0` are re-tiled per 16 rows × 256 values: `TileQ4K` is 3,072 bytes (f32 scales
/// and minimums unpacked, 0.75 bytes a value) and `TileQ6K` 5,120 (1.25 bytes a value). Q6_K is
/// re-tiled only for multi-row matmuls, which every prefill of more than one token is, so a
/// serving replica has it. On aarch64 with dot-product instructions, Q4_K, Q5_K and Q6_K are
/// interleaved 8 rows at a time (`BlockQ4Kx8` etc.: the same bytes again). Not counted: the AMX
/// Q4_K tiles (CPUs with AMX only) and candle's Q8_0 tiles (never used: Q8_0 is packed here).
/// Decided by target architecture, not by the CPU `plan` runs on: a serving node is assumed to
/// have AVX2 (x86) or dot-product instructions (aarch64), so a plan never under-counts.
/// Measured: SmolLM2-135M at q6_k gains 51 MiB of RSS while serving against q8_0's 20; its 30
/// Q6_K `ffn_down` matrices (576 × 1536) re-tile to 33 MB.
pub(crate) fn candle_repack_bytes(dtype: GgmlDType, n: usize, k: usize) -> u64 {
    if cfg!(target_arch = "x86_64") && n.is_multiple_of(16) && k.is_multiple_of(256) {
        let tile = match dtype {
            GgmlDType::Q4K => 3072,
            GgmlDType::Q6K => 5120,
            _ => return 0,
        };
        return (n / 16 * (k / 256) * tile) as u64;
    }
    if cfg!(target_arch = "aarch64")
        && n.is_multiple_of(8)
        && matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
    {
        return ggml_bytes(dtype, n * k);
    }
    0
}

/// Bytes of `elems` values in GGML's own layout of `dtype`.
pub(crate) fn ggml_bytes(dtype: GgmlDType, elems: usize) -> u64 {
    (elems / dtype.block_size() * dtype.type_size()) as u64
}

/// Bytes a CPU replica holds for an `n × k` weight of `dtype` (see [`Matmul::bytes`]), predicted
/// without loading it. The loaded model's [`Linear::bytes`] equals this by construction of both
/// on [`PackedMatrix::bytes_for`] and [`candle_repack_bytes`] (tested on every level).
pub(crate) fn resident_bytes(dtype: GgmlDType, n: usize, k: usize) -> u64 {
    match packed_format(dtype) {
        Some(format) => PackedMatrix::bytes_for(format, n, k),
        None => ggml_bytes(dtype, n * k) + candle_repack_bytes(dtype, n, k),
    }
}

/// Bytes of a [`Linear`] over weights of `(dtype, rows)` with rows of `k`, in output order: the
/// same grouping into fused matrices as [`Linear::new`].
pub(crate) fn linear_resident_bytes(parts: &[(GgmlDType, usize)], k: usize) -> u64 {
    let mut groups: Vec<(GgmlDType, usize)> = Vec::new();
    for &(dtype, n) in parts {
        match groups.last_mut() {
            Some((d, rows)) if *d == dtype => *rows += n,
            _ => groups.push((dtype, n)),
        }
    }
    groups.iter().map(|&(d, n)| resident_bytes(d, n, k)).sum()
}

/// Whether a tied embedding of `dtype` keeps its own copy next to the output head on CPU: the
/// head can neither serve lookups (it is not packed) nor share the embedding's storage (candle
/// widens f32 weights into a separate `Tensor`).
pub(crate) fn tied_embedding_kept_apart(dtype: GgmlDType) -> bool {
    packed_format(dtype).is_none() && dtype == GgmlDType::F32
}

/// `BITSCALE_KERNELS=candle` routes every matmul through candle, `=portable` runs our kernels
/// without SIMD and `=avx2` / `=avx512vnni` picks that set where the CPU has it
/// (`KernelSet::active`), to compare implementations on the same model.
fn kernels_env() -> Option<String> {
    std::env::var("BITSCALE_KERNELS").ok()
}

/// The CPU kernels this process runs its matmuls with: `candle` when forced, else the
/// [`super::KernelSet`]'s name (`bitscale_engine_info{kernels}`).
pub fn kernels_label() -> &'static str {
    if candle_kernels_forced() {
        "candle"
    } else {
        super::KernelSet::active().name()
    }
}

fn candle_kernels_forced() -> bool {
    kernels_env().is_some_and(|v| v == "candle")
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| match kernels_env().as_deref() {
        Some("portable") => Isa::Portable,
        _ => Isa::Best,
    })
}

/// A linear layer `y = x Wᵀ` whose output may be several weights side by side (fused QKV or
/// gate+up). Same-dtype parts are fused into one matrix at load; parts of different dtypes (as in
/// Q4_K_M files) stay separate matmuls whose outputs are interleaved per row.
pub(crate) struct Linear {
    parts: Vec<(Matmul, usize)>,
    in_dim: usize,
    out_dim: usize,
    bytes: u64,
}

impl Linear {
    /// Builds the layer from weights of shape `[n_i, in_dim]`, in output order.
    pub(crate) fn new(weights: Vec<QTensor>, device: &Device) -> Result<Self, ModelError> {
        let mut groups: Vec<Vec<QTensor>> = Vec::new();
        for w in weights {
            match groups.last_mut() {
                Some(g) if g[0].dtype() == w.dtype() => g.push(w),
                _ => groups.push(vec![w]),
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        let (mut in_dim, mut out_dim, mut bytes) = (0, 0, 0u64);
        for g in groups {
            let fused = concat_rows(g, device)?;
            let (n, k) = fused.shape().dims2()?;
            in_dim = k;
            out_dim += n;
            let mm = Matmul::new(Arc::new(fused))?;
            bytes += mm.bytes();
            parts.push((mm, n));
        }
        Ok(Self {
            parts,
            in_dim,
            out_dim,
            bytes,
        })
    }

    /// A layer over a weight shared with another use (the tied embedding / output head).
    pub(crate) fn shared(w: Arc<QTensor>) -> Result<Self, ModelError> {
        let (n, k) = w.shape().dims2()?;
        let mm = Matmul::new(w)?;
        let bytes = mm.bytes();
        Ok(Self {
            parts: vec![(mm, n)],
            in_dim: k,
            out_dim: n,
            bytes,
        })
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Bytes the layer's weights hold once serving ([`resident_bytes`] of each fused part).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rows `ids` of the weight as f32, when the layer is one packed matrix (so a tied embedding
    /// can be looked up here instead of keeping a second copy).
    pub(crate) fn lookup(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let [(Matmul::Packed(p), _)] = self.parts.as_slice() else {
            return None;
        };
        let mut out = Vec::with_capacity(ids.len() * p.k);
        for &id in ids {
            out.extend(p.row(id as usize));
        }
        Some(out)
    }

    /// Whether [`Linear::lookup`] works on this layer.
    pub(crate) fn can_lookup(&self) -> bool {
        matches!(self.parts.as_slice(), [(Matmul::Packed(_), _)])
    }

    /// `x` is `m` rows of `in_dim`; returns `m` rows of `out_dim`.
    pub(crate) fn forward(&self, x: Vec<f32>, m: usize, device: &Device) -> Result<Vec<f32>, ModelError> {
        if let [(mm, _)] = self.parts.as_slice() {
            return mm.forward(&x, m, self.in_dim, device);
        }
        let mut out = vec![0f32; m * self.out_dim];
        let mut col = 0;
        for (mm, n) in &self.parts {
            let y = mm.forward(&x, m, self.in_dim, device)?;
            for (dst, src) in out.chunks_exact_mut(self.out_dim).zip(y.chunks_exact(*n)) {
                dst[col..col + n].copy_from_slice(src);
            }
            col += n;
        }
        Ok(out)
    }
}

/// Stacks same-dtype matrices with equal row length into one (their blocks are row-major, so the
/// bytes simply concatenate).
fn concat_rows(mut ws: Vec<QTensor>, device: &Device) -> Result<QTensor, ModelError> {
    if ws.len() == 1 && device.same_device(&ws[0].device()) {
        return Ok(ws.remove(0));
    }
    let dtype = ws[0].dtype();
    let k = ws[0].shape().dims2()?.1;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for w in &ws {
        let (n, wk) = w.shape().dims2()?;
        if wk != k {
            return Err(candle_core::Error::Msg(format!("cannot fuse rows of length {wk} and {k}")).into());
        }
        rows += n;
        bytes.extend_from_slice(&w.data()?);
    }
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        &bytes,
        vec![rows, k],
        device,
    )?)
}

/// RMSNorm of each `width`-long row of `x` into a new buffer.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    let mut out = vec![0f32; x.len()];
    for (row, dst) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let ms = dot(row, row) / width as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((d, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
            *d = v * scale * w;
        }
    }
    out
}

/// `x += y`, elementwise.
pub(crate) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
