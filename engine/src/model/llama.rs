//! The Llama-family decoder and its batched forward pass.
//!
//! One step stacks every chunk's tokens into one `[total_rows, hidden]` activation, runs each
//! weight matrix once over all rows, and attends per sequence over its own cache.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use super::attention::{AttnDims, RopeRows, SeqKv, SeqRows, attend};
use super::config::LlamaConfig;
use super::kernels::swiglu;
use super::linear::{Linear, add_assign, rms_norm};
use super::{Forward, KvCache, ModelError, ModelInfo, SeqChunk};

/// One decoder block.
pub(crate) struct Block {
    pub attn_norm: Vec<f32>,
    /// `[q | k | v]` projection.
    pub qkv: Linear,
    pub o: Linear,
    pub ffn_norm: Vec<f32>,
    /// `[gate | up]` projection.
    pub gate_up: Linear,
    pub down: Linear,
}

/// A loaded Llama model: immutable weights shared by all sequences.
pub(crate) struct Llama {
    pub cfg: LlamaConfig,
    pub info: ModelInfo,
    pub device: Device,
    /// Token embeddings, looked up row by row; `None` when tied to a packed output head, whose
    /// rows are looked up instead (one copy of the matrix, not two).
    pub embed: Option<Arc<QTensor>>,
    pub blocks: Vec<Block>,
    pub norm: Vec<f32>,
    /// The output head (the embedding matrix itself when tied).
    pub lm_head: Linear,
    pub inv_freq: Vec<f32>,
}

/// RoPE inverse frequencies, divided by per-pair factors when the model has them.
pub(crate) fn inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let hd = cfg.head_dim;
    (0..hd / 2)
        .map(|i| {
            let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / hd as f32);
            match &cfg.rope_freq_factors {
                Some(fs) => f / fs.get(i).copied().unwrap_or(1.0),
                None => f,
            }
        })
        .collect()
}

impl Llama {
    fn dims(&self) -> AttnDims {
        AttnDims {
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    /// Checks the whole batch before touching any cache, so a bad request cannot leave others
    /// half-written.
    fn validate(&self, batch: &mut [SeqChunk<'_>]) -> Result<(), ModelError> {
        for c in batch.iter_mut() {
            let needed = c.cache.len() + c.tokens.len();
            if needed > self.cfg.context {
                return Err(ModelError::ContextOverflow {
                    needed,
                    context_length: self.cfg.context,
                });
            }
            if let Some(&id) = c.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocab_size: self.cfg.vocab,
                });
            }
            if c.cache.state_mut::<SeqKv>().is_none() {
                return Err(ModelError::ForeignCache);
            }
        }
        Ok(())
    }

    fn embed_rows(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let Some(embed) = &self.embed else {
            // The loader drops the table only when the head can look rows up.
            let rows = self.lm_head.lookup(ids);
            return rows.ok_or_else(|| candle_core::Error::Msg("no embedding table".into()).into());
        };
        let ids = Tensor::new(ids, &self.device)?;
        Ok(embed.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Runs one step. With `every_position`, each chunk gets the logits of all its tokens
    /// (`tokens.len() × vocab`, row-major) whatever its `want_logits`; otherwise only the last.
    fn step(
        &self,
        batch: &mut [SeqChunk<'_>],
        every_position: bool,
    ) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        self.validate(batch)?;
        let cfg = &self.cfg;
        let hidden = cfg.hidden;

        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for c in batch.iter() {
            ids.extend_from_slice(c.tokens);
            positions.extend(c.cache.len()..c.cache.len() + c.tokens.len());
        }
        let m = ids.len();
        if m == 0 {
            return Ok(batch.iter().map(|_| None).collect());
        }
        let rope = RopeRows::new(&positions, &self.inv_freq);

        let mut seqs = Vec::with_capacity(batch.len());
        let mut row0 = 0;
        for c in batch.iter_mut() {
            let past = c.cache.len();
            let rows = c.tokens.len();
            let kv = c.cache.state_mut::<SeqKv>().ok_or(ModelError::ForeignCache)?;
            kv.truncate(past);
            seqs.push(SeqRows { row0, rows, past, kv });
            row0 += rows;
        }

        let mut x = self.embed_rows(&ids)?;
        for (l, b) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &b.attn_norm, cfg.rms_eps);
            let mut qkv = b.qkv.forward(h, m, &self.device)?;
            let attn = attend(&mut qkv, &mut seqs, l, self.dims(), &rope);
            add_assign(&mut x, &b.o.forward(attn, m, &self.device)?);
            let h = rms_norm(&x, &b.ffn_norm, cfg.rms_eps);
            let gu = b.gate_up.forward(h, m, &self.device)?;
            let act = swiglu(&gu, cfg.ffn);
            add_assign(&mut x, &b.down.forward(act, m, &self.device)?);
        }
        drop(seqs);

        // Only the rows whose logits are wanted go through the (vocab-wide) head.
        let mut head_rows = Vec::new();
        let mut row_end = 0;
        for c in batch.iter() {
            let row_start = row_end;
            row_end += c.tokens.len();
            if every_position {
                head_rows.extend_from_slice(&x[row_start * hidden..row_end * hidden]);
            } else if c.want_logits && !c.tokens.is_empty() {
                head_rows.extend_from_slice(&x[(row_end - 1) * hidden..row_end * hidden]);
            }
        }
        let wanted = head_rows.len() / hidden;
        let logits = if wanted > 0 {
            let h = rms_norm(&head_rows, &self.norm, cfg.rms_eps);
            self.lm_head.forward(h, wanted, &self.device)?
        } else {
            Vec::new()
        };
        let vocab = self.lm_head.out_dim();
        let mut rows = logits.chunks_exact(vocab);
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        for c in batch.iter_mut() {
            c.cache.advance(c.tokens.len());
            if every_position {
                let n = c.tokens.len() * vocab;
                out.push(logits.get(start..start + n).map(<[f32]>::to_vec));
                start += n;
            } else if c.want_logits && !c.tokens.is_empty() {
                out.push(rows.next().map(<[f32]>::to_vec));
            } else {
                out.push(None);
            }
        }
        Ok(out)
    }
}

/// Runs `f` on a rayon worker. A step makes ~150 parallel calls (every matmul, every layer's
/// attention); from the scheduler's own thread each would be injected into the pool and waited
/// for on a futex, a sleep/wake round trip per call. From a worker they are pushed onto its local
/// queue and the other workers steal them while still spinning.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

impl Forward for Llama {
    fn forward(&self, batch: &mut [SeqChunk<'_>]) -> anyhow::Result<Vec<Option<Vec<f32>>>> {
        Ok(on_pool(|| self.step(batch, false))?)
    }

    fn forward_every_position(&self, batch: &mut [SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let out = on_pool(|| self.step(batch, true))?;
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn new_cache(&self) -> KvCache {
        // Empty: the scheduler reserves a sequence's whole cache (`reserve_cache`); other users
        // grow it by doubling.
        KvCache::new(Box::new(SeqKv::new(self.cfg.layers, self.dims(), 0)))
    }

    fn fork_cache(&self, cache: &KvCache, len: usize) -> Option<KvCache> {
        let kv = cache.state_ref::<SeqKv>()?;
        if len > cache.len() {
            return None;
        }
        let copy = kv.prefix(len);
        Some(KvCache::with_len(Box::new(copy), len))
    }

    fn reserve_cache(&self, cache: &mut KvCache, positions: usize) {
        if let Some(kv) = cache.state_mut::<SeqKv>() {
            kv.reserve(positions.min(self.cfg.context));
        }
    }

    fn compact_cache(&self, cache: &mut KvCache) {
        if let Some(kv) = cache.state_mut::<SeqKv>() {
            kv.shrink();
        }
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
