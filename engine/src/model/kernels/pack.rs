//! [`PackedMatrix`]: GGML blocks rearranged for the kernels, and the way back to f32 for embedding
//! lookups.
//!
//! Every format interleaves eight weight rows ([`ROWS`]). For the 32-value block formats (Q8_0,
//! Q4_x, Q5_x; the K-quants Q4_K and Q5_K alike per 32-value sub-block) 32-byte vector `c` of a
//! group and block holds four consecutive quants of every row (`[row][4]`), so one vector
//! instruction against an activation broadcast four values at a time yields a partial dot for
//! eight rows at once, with no horizontal sums. For f16/bf16 each column of a group is the eight
//! rows' values (16 bytes), multiplied by one broadcast activation. The row count is padded to a
//! multiple of eight with zero rows.

use half::{bf16, f16};

use super::{BLOCK, Format, kquant};

/// Weight rows interleaved in one group (see the module docs).
pub(crate) const ROWS: usize = 8;

/// A weight matrix `n × k` in a kernel-friendly layout. See the module docs.
pub(crate) struct PackedMatrix {
    pub format: Format,
    /// Output rows.
    pub n: usize,
    /// Values per row.
    pub k: usize,
    /// Quants. `Q8`: per group of eight rows and block, 256 bytes; byte `c·32 + r·4 + e` is row
    /// `r`'s quant `4c + e` (as i8). `Q4`/`Q5`: 128 bytes per group and block; byte
    /// `c·32 + r·4 + e` holds row `r`'s quant `4c + e` in its low nibble and `16 + 4c + e` in its
    /// high nibble (`c < 4`). `F16`/`Bf16`: per group, column `i` is 16 bytes, row `r`'s value at
    /// `i·16 + 2r` (little-endian). K-quants: see `kquant`.
    pub qs: Vec<u8>,
    /// Fifth bits of `Q5`: per group and block eight words, one per row; bit `c` of byte `e` of
    /// row `r`'s word is the fifth bit of its quant `4c + e`.
    pub qh: Vec<u32>,
    /// K-quant sub-block scales (and minimums), 16 bytes per super-block; see `kquant`.
    pub sc: Vec<u8>,
    /// Scales as f16 bits: per group and block the eight rows' (K-quants: `n × k/256`).
    pub d: Vec<u16>,
    /// Minimums as f16 bits (`Q4`/`Q5`), laid out as `d` (`Q4K`/`Q5K`: `dmin` per super-block).
    pub mn: Vec<u16>,
}

/// Index of row `j`'s entry for block `b` in `d`, `mn` and `qh` of a 32-value block format
/// (`nb` blocks per row).
pub(super) fn group_at(j: usize, nb: usize, b: usize) -> usize {
    ((j / ROWS) * nb + b) * ROWS + j % ROWS
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
    /// agrees with the loaded model (rows padded to a multiple of eight; Q4_0 holds 20 bytes per 32
    /// values against GGML's 18, as the minimum is kept for all 4/5-bit formats).
    pub(crate) fn bytes_for(format: Format, n: usize, k: usize) -> u64 {
        let nb = k / BLOCK;
        let padded = n.div_ceil(ROWS) * ROWS;
        let scales = 2 * padded * nb;
        // K-quants: per super-block the quants, 16 bytes of unpacked sub-scales, `d` (and `dmin`).
        let bytes = match format {
            Format::F16 | Format::Bf16 => 2 * padded * k,
            Format::Q8 => padded * k + scales,
            Format::Q4 => padded * k / 2 + 2 * scales,
            Format::Q5 => padded * k / 2 + 4 * padded * nb + 2 * scales,
            Format::Q4K | Format::Q5K => {
                padded * (k / super::kquant::QK) * (super::kquant::qs_bytes(format) + 16 + 2 + 2)
            }
            Format::Q6K => padded * (k / super::kquant::QK) * (super::kquant::qs_bytes(format) + 16 + 2),
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
        let mut m = Self {
            format,
            n,
            k,
            qs: Vec::new(),
            qh: Vec::new(),
            sc: Vec::new(),
            d: Vec::new(),
            mn: Vec::new(),
        };
        if format.is_float() {
            // Column `i` of a group of eight rows is 16 bytes: the eight rows' values.
            m.qs = vec![0; n.div_ceil(ROWS) * ROWS * k * 2];
            for (j, row) in bytes.chunks_exact(2 * k).enumerate() {
                let base = (j / ROWS) * ROWS * k * 2 + (j % ROWS) * 2;
                for (i, v) in row.chunks_exact(2).enumerate() {
                    m.qs[base + i * ROWS * 2..base + i * ROWS * 2 + 2].copy_from_slice(v);
                }
            }
            return Ok(m);
        }
        if format.is_k() {
            kquant::pack(&mut m, bytes, dtype.type_size());
            return Ok(m);
        }
        let padded = n.div_ceil(ROWS) * ROWS;
        m.d = vec![0; padded * nb];
        let ts = dtype.type_size();
        match format {
            Format::Q8 => {
                m.qs = vec![0; padded * k];
                for (i, blk) in bytes.chunks_exact(ts).enumerate() {
                    let (j, b) = (i / nb, i % nb);
                    m.d[group_at(j, nb, b)] = le16(blk, 0);
                    let base = ((j / ROWS) * nb + b) * ROWS * BLOCK + (j % ROWS) * 4;
                    for (c, q) in blk[2..2 + BLOCK].chunks_exact(4).enumerate() {
                        m.qs[base + c * 32..base + c * 32 + 4].copy_from_slice(q);
                    }
                }
            }
            Format::Q4 | Format::Q5 => {
                m.mn = vec![0; padded * nb];
                m.qs = vec![0; padded * k / 2];
                if format == Format::Q5 {
                    m.qh = vec![0; padded * nb];
                }
                for (i, blk) in bytes.chunks_exact(ts).enumerate() {
                    let (j, b) = (i / nb, i % nb);
                    let at = group_at(j, nb, b);
                    let d = le16(blk, 0);
                    let (mn, rest) = match dtype {
                        T::Q4_0 => (-8.0 * f16::from_bits(d).to_f32(), &blk[2..]),
                        T::Q5_0 => (-16.0 * f16::from_bits(d).to_f32(), &blk[2..]),
                        _ => (f16::from_bits(le16(blk, 2)).to_f32(), &blk[4..]),
                    };
                    m.d[at] = d;
                    m.mn[at] = f16::from_f32(mn).to_bits();
                    let qs = if format == Format::Q5 {
                        m.qh[at] =
                            interleave_fifth_bits(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
                        &rest[4..]
                    } else {
                        rest
                    };
                    // GGML's byte `t` holds quants `t` and `t + 16`: exactly our byte for `4c + e = t`.
                    let base = ((j / ROWS) * nb + b) * ROWS * BLOCK / 2 + (j % ROWS) * 4;
                    for (c, q) in qs[..BLOCK / 2].chunks_exact(4).enumerate() {
                        m.qs[base + c * 32..base + c * 32 + 4].copy_from_slice(q);
                    }
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
        match self.format {
            Format::F16 | Format::Bf16 => (0..k).map(|c| self.float(i, c)).collect(),
            Format::Q8 | Format::Q4 | Format::Q5 => (0..nb)
                .flat_map(|b| {
                    let (d, mn) = (self.scale(i, b), self.min(i, b));
                    (0..BLOCK).map(move |e| d * f32::from(self.quant(i, b, e)) + mn)
                })
                .collect(),
            Format::Q4K | Format::Q5K | Format::Q6K => kquant::row(self, i),
        }
    }
}

impl PackedMatrix {
    /// Row `j`'s quant `e` of block `b` in a 32-value block format: signed for `Q8`, `0..16` or
    /// `0..32` for `Q4`/`Q5` (the reference kernels and embedding lookups read through this).
    pub(super) fn quant(&self, j: usize, b: usize, e: usize) -> i16 {
        let nb = self.k / BLOCK;
        let (c, r) = (e % 16 / 4, j % ROWS);
        match self.format {
            Format::Q8 => {
                let at = ((j / ROWS) * nb + b) * ROWS * BLOCK + (e / 4) * 32 + r * 4 + e % 4;
                i16::from(self.qs[at] as i8)
            }
            _ => {
                let at = ((j / ROWS) * nb + b) * ROWS * BLOCK / 2 + c * 32 + r * 4 + e % 4;
                let nib = if e < 16 {
                    self.qs[at] & 0x0F
                } else {
                    self.qs[at] >> 4
                };
                let fifth = self
                    .qh
                    .get(group_at(j, nb, b))
                    .map_or(0, |h| (h >> ((e % 4) * 8 + e / 4)) & 1);
                i16::from(nib) | ((fifth as i16) << 4)
            }
        }
    }

    /// Row `j`'s value in column `c` of an `F16`/`Bf16` matrix.
    pub(super) fn float(&self, j: usize, c: usize) -> f32 {
        let at = ((j / ROWS) * self.k + c) * ROWS * 2 + (j % ROWS) * 2;
        let bits = u16::from_le_bytes([self.qs[at], self.qs[at + 1]]);
        if self.format == Format::Bf16 {
            bf16::from_bits(bits).to_f32()
        } else {
            f16::from_bits(bits).to_f32()
        }
    }

    /// Row `j`'s scale for block `b` (32-value block formats).
    pub(super) fn scale(&self, j: usize, b: usize) -> f32 {
        f16::from_bits(self.d[group_at(j, self.k / BLOCK, b)]).to_f32()
    }

    /// Row `j`'s minimum for block `b` (0 for `Q8`).
    pub(super) fn min(&self, j: usize, b: usize) -> f32 {
        self.mn
            .get(group_at(j, self.k / BLOCK, b))
            .map_or(0.0, |&m| f16::from_bits(m).to_f32())
    }
}

/// GGML's fifth bits of one block (bit `t` for quant `t`) in our order: bit `c` of byte `e` for
/// quant `4c + e`.
fn interleave_fifth_bits(h: u32) -> u32 {
    (0..BLOCK).fold(0, |acc, t| acc | (((h >> t) & 1) << ((t % 4) * 8 + t / 4)))
}
