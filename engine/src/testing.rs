//! Test doubles: a fake [`Forward`] and a byte-level [`TextCodec`], for scheduler and HTTP tests
//! that must not need real weights.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use crate::{
    model::{ChatMessage, DeviceKind, Forward, KvCache, ModelInfo, QuantLevel, SeqChunk},
    server::TextCodec,
};

/// Steps remembered by [`FakeModel::steps`].
const STEP_LOG: usize = 4096;

/// A model whose logits favour `(last token + 1) % vocab`; it stores nothing in the cache.
pub struct FakeModel {
    info: ModelInfo,
    step_delay: Duration,
    token_delay: Duration,
    steps: Mutex<VecDeque<Vec<usize>>>,
}

impl FakeModel {
    /// A fake with `vocab` tokens and `context_length` positions, 64 KV bytes per token.
    pub fn new(vocab: usize, context_length: usize) -> Self {
        Self {
            info: ModelInfo {
                name: "fake".into(),
                quantization: QuantLevel::F32,
                device: DeviceKind::Cpu,
                context_length,
                vocab_size: vocab,
                weight_bytes: 1024,
                kv_bytes_per_token: 64,
            },
            step_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            steps: Mutex::new(VecDeque::new()),
        }
    }

    /// Makes every step sleep, to hold requests in flight.
    pub fn with_step_delay(mut self, d: Duration) -> Self {
        self.step_delay = d;
        self
    }

    /// Makes every step sleep this long per token it carries, as a compute-bound step takes.
    pub fn with_token_delay(mut self, d: Duration) -> Self {
        self.token_delay = d;
        self
    }

    /// Tokens per chunk of each recent step, oldest first.
    pub fn steps(&self) -> Vec<Vec<usize>> {
        self.steps
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Forward for FakeModel {
    fn forward(&self, batch: &mut [SeqChunk<'_>]) -> anyhow::Result<Vec<Option<Vec<f32>>>> {
        let tokens: usize = batch.iter().map(|c| c.tokens.len()).sum();
        let delay = self.step_delay + self.token_delay * u32::try_from(tokens).unwrap_or(u32::MAX);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if let Ok(mut s) = self.steps.lock() {
            if s.len() == STEP_LOG {
                s.pop_front();
            }
            s.push_back(batch.iter().map(|c| c.tokens.len()).collect());
        }
        let vocab = self.info.vocab_size;
        batch
            .iter_mut()
            .map(|c| {
                anyhow::ensure!(
                    c.cache.len() + c.tokens.len() <= self.info.context_length,
                    "past the context"
                );
                c.cache.advance(c.tokens.len());
                Ok(c.want_logits.then(|| {
                    let last = c.tokens.last().copied().unwrap_or(0) as usize;
                    let mut l = vec![0.0; vocab];
                    l[(last + 1) % vocab] = 10.0;
                    l
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(Box::new(()))
    }

    fn fork_cache(&self, cache: &KvCache, len: usize) -> Option<KvCache> {
        (len <= cache.len()).then(|| KvCache::with_len(Box::new(()), len))
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

/// End-of-sequence id of [`ByteCodec`].
pub const BYTE_EOS: u32 = 256;

/// One token per byte (ids 0..=255) plus EOS = 256; pair it with `FakeModel::new(257, …)`.
pub struct ByteCodec {
    stop: Vec<u32>,
}

impl Default for ByteCodec {
    fn default() -> Self {
        Self { stop: vec![BYTE_EOS] }
    }
}

impl TextCodec for ByteCodec {
    fn encode(&self, text: &str, _add_special: bool) -> anyhow::Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let bytes: Vec<u8> = ids.iter().filter_map(|&i| u8::try_from(i).ok()).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn stop_token_ids(&self) -> &[u32] {
        &self.stop
    }

    fn apply_chat_template(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        let mut s: String = messages
            .iter()
            .map(|m| format!("{}: {}\n", m.role, m.content))
            .collect();
        s.push_str("assistant:");
        Ok(s)
    }
}
