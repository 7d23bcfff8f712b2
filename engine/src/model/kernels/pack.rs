//! [`PackedMatrix`]: GGML blocks rearranged for the kernels (quants per row contiguous, scales
//! apart), and the way back to f32 for embedding lookups.

use half::{bf16, f16};

use super::{BLOCK, Format, kquant};

/// A weight matrix `n × k` in a kernel-friendly layout. See the module docs of `kernels`.
pub(crate) struct PackedMatrix {
    pub format: Format,
    /// Output rows.
    pub n: usize,
    /// Values per row.
    pub k: usize,
    /// Quants (`Q8`: `n × k` bytes as i8; `Q4`/`Q5`: `n × k/2` nibble pairs) or float bits
    /// (`F16`/`Bf16`: `n × k` as `u16`, little-endian byte pairs).
    pub qs: Vec<u8>,
    /// Fifth bits of `Q5`, one `u32` per block (`n × k/32`).
    pub qh: Vec<u32>,
    /// K-quant sub-block scales (and minimums), 16 bytes per super-block; see `kquant`.
    pub sc: Vec<u8>,
    /// Block scales as f16 bits, `n × scale_stride` (K-quants: one `d` per super-block).
    pub d: Vec<u16>,
    /// Block minimums as f16 bits (`Q4`/`Q5`), `n × scale_stride` (`Q4K`/`Q5K`: `dmin`, one per
    /// super-block).
    pub mn: Vec<u16>,
    /// Scales per row: `k/32` rounded up to a multiple of 8 (K-quants: `k/256`).
    pub scale_stride: usize,
}

/// Why a tensor cannot be packed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PackError {
    #[error("no packed kernel for {0:?}")]
    Unsupported(candle_core::quantized::GgmlDType),
    #[error("row length {k} is not a multiple of the block size {block}")]
    RowLength { k: usize, block: usize },
    #[error("{got} bytes for a {n}×{k} {dtype:?} matrix, expected {want}")]
    Size {
        dtype: candle_core::quantized::GgmlDType,
        n: usize,
        k: usize,
        got: usize,
        want: usize,
    },
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl PackedMatrix {
    /// Bytes an `n × k` matrix of `format` takes once packed: exactly what [`PackedMatrix::from_ggml`]
    /// allocates (and [`PackedMatrix::bytes`] reports), so a plan made from a file's header alone
    /// agrees with the loaded model. The padded scales make this more than the GGML bytes: Q4_0 on
    /// 576-wide rows holds 21.3 bytes per 32 values against GGML's 18.
    pub(crate) fn bytes_for(format: Format, n: usize, k: usize) -> u64 {
        let nb = k / BLOCK;
        let scales = 2 * n * nb.div_ceil(8) * 8;
        // K-quants: per super-block the quants, 16 bytes of unpacked sub-scales, `d` (and `dmin`).
        let super_blocks = n * (k / super::kquant::QK);
        let bytes = match format {
            Format::F16 | Format::Bf16 => 2 * n * k,
            Format::Q8 => n * k + scales,
            Format::Q4 => n * k / 2 + 2 * scales,
            Format::Q5 => n * k / 2 + 4 * n * nb + 2 * scales,
            Format::Q4K | Format::Q5K => super_blocks * (super::kquant::qs_bytes(format) + 16 + 2 + 2),
            Format::Q6K => super_blocks * (super::kquant::qs_bytes(format) + 16 + 2),
        };
        bytes as u64
    }

    /// Bytes this matrix holds.
    pub(crate) fn bytes(&self) -> u64 {
        (self.qs.capacity()
            + 4 * self.qh.capacity()
            + self.sc.capacity()
            + 2 * self.d.capacity()
            + 2 * self.mn.capacity()) as u64
    }

    /// Repacks the raw GGML bytes of an `n × k` matrix of `dtype`.
    pub(crate) fn from_ggml(
        dtype: candle_core::quantized::GgmlDType,
        bytes: &[u8],
        n: usize,
        k: usize,
    ) -> Result<Self, PackError> {
        use candle_core::quantized::GgmlDType as T;
        let format = Format::for_dtype(dtype).ok_or(PackError::Unsupported(dtype))?;
        let block = dtype.block_size();
        if !k.is_multiple_of(block) {
            return Err(PackError::RowLength { k, block });
        }
        let want = n * k / block * dtype.type_size();
        if bytes.len() != want {
            return Err(PackError::Size {
                dtype,
                n,
                k,
                got: bytes.len(),
                want,
            });
        }
        let nb = k / BLOCK;
        let scale_stride = nb.div_ceil(8) * 8;
        let mut m = Self {
            format,
            n,
            k,
            qs: Vec::new(),
            qh: Vec::new(),
            sc: Vec::new(),
            d: Vec::new(),
            mn: Vec::new(),
            scale_stride,
        };
        if format.is_float() {
            m.qs = bytes.to_vec();
            return Ok(m);
        }
        if format.is_k() {
            m.scale_stride = k / kquant::QK;
            kquant::pack(&mut m, bytes, dtype.type_size());
            return Ok(m);
        }
        m.d = vec![0; n * scale_stride];
        let ts = dtype.type_size();
        match format {
            Format::Q8 => {
                m.qs = Vec::with_capacity(n * k);
                for (i, b) in bytes.chunks_exact(ts).enumerate() {
                    m.d[(i / nb) * scale_stride + i % nb] = le16(b, 0);
                    m.qs.extend_from_slice(&b[2..2 + BLOCK]);
                }
            }
            Format::Q4 | Format::Q5 => {
                m.mn = vec![0; n * scale_stride];
                m.qs = Vec::with_capacity(n * k / 2);
                if format == Format::Q5 {
                    m.qh = Vec::with_capacity(n * nb);
                }
                for (i, b) in bytes.chunks_exact(ts).enumerate() {
                    let at = (i / nb) * scale_stride + i % nb;
                    let d = le16(b, 0);
                    let (mn, rest) = match dtype {
                        T::Q4_0 => (-8.0 * f16::from_bits(d).to_f32(), &b[2..]),
                        T::Q5_0 => (-16.0 * f16::from_bits(d).to_f32(), &b[2..]),
                        _ => (f16::from_bits(le16(b, 2)).to_f32(), &b[4..]),
                    };
                    m.d[at] = d;
                    m.mn[at] = f16::from_f32(mn).to_bits();
                    let qs = if format == Format::Q5 {
                        m.qh.push(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
                        &rest[4..]
                    } else {
                        rest
                    };
                    m.qs.extend_from_slice(&qs[..BLOCK / 2]);
                }
            }
            // Returned above.
            Format::F16 | Format::Bf16 | Format::Q4K | Format::Q5K | Format::Q6K => {}
        }
        Ok(m)
    }

    /// Row `i` as f32 (embedding lookup).
    pub(crate) fn row(&self, i: usize) -> Vec<f32> {
        let k = self.k;
        let nb = k / BLOCK;
        let sc = |v: &[u16], b: usize| f16::from_bits(v[i * self.scale_stride + b]).to_f32();
        match self.format {
            Format::F16 => self.qs[2 * i * k..2 * (i + 1) * k]
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Format::Bf16 => self.qs[2 * i * k..2 * (i + 1) * k]
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Format::Q8 => {
                let q = &self.qs[i * k..(i + 1) * k];
                (0..k)
                    .map(|j| sc(&self.d, j / BLOCK) * f32::from(q[j] as i8))
                    .collect()
            }
            Format::Q4 | Format::Q5 => {
                let mut out = Vec::with_capacity(k);
                for b in 0..nb {
                    let (d, mn) = (sc(&self.d, b), sc(&self.mn, b));
                    let at = (i * nb + b) * BLOCK / 2;
                    let qs = &self.qs[at..at + BLOCK / 2];
                    let hi = self.qh.get(i * nb + b).copied().unwrap_or(0);
                    for j in 0..BLOCK {
                        let nib = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
                        let fifth = ((hi >> j) & 1) as u8;
                        out.push(d * f32::from(nib | (fifth << 4)) + mn);
                    }
                }
                out
            }
            Format::Q4K | Format::Q5K | Format::Q6K => kquant::row(self, i),
        }
    }
}
