//! The prefix cache: the KV caches of recently finished sequences, so a new request whose prompt
//! starts with the same tokens (a system prompt, the earlier turns of a chat, a retried request)
//! copies those positions instead of prefilling them again.
//!
//! Whole sequences, not blocks: an entry is one finished sequence's tokens and cache, a hit
//! copies the longest common prefix into the new sequence's own cache (the copy is a memcpy per
//! layer, far cheaper than the prefill it replaces). The positions computed here are the ones a
//! prefill would compute — every row of a step gets the same result whatever it is batched with —
//! so a hit does not change the output. Entries count against the KV pool and are dropped,
//! oldest first, when admission needs the room.

use crate::model::KvCache;

/// One finished sequence: its tokens whose positions are in `cache`.
struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    bytes: u64,
}

/// The most recently finished sequences, oldest first.
pub(super) struct PrefixCache {
    entries: Vec<Entry>,
    max_entries: usize,
    bytes: u64,
}

impl PrefixCache {
    /// A cache of at most `max_entries` sequences (0 disables it).
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            entries: Vec::new(),
            max_entries,
            bytes: 0,
        }
    }

    /// KV bytes the entries hold.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The entry sharing the longest prefix with `prompt`, and its length: at most
    /// `prompt.len() − 1` tokens, so the last prompt token is still computed for its logits.
    /// A hit becomes the most recently used entry.
    pub(super) fn lookup(&mut self, prompt: &[u32]) -> Option<(&KvCache, usize)> {
        let limit = prompt.len().saturating_sub(1);
        let (at, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let common = e.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                (i, common.min(limit).min(e.cache.len()))
            })
            .max_by_key(|&(i, len)| (len, i))?;
        if len == 0 {
            return None;
        }
        let entry = self.entries.remove(at);
        self.entries.push(entry);
        self.entries.last().map(|e| (&e.cache, len))
    }

    /// Keeps a finished sequence's `tokens` (their positions are in `cache`, `bytes` of KV).
    /// An entry whose tokens it extends is replaced; beyond `max_entries` the oldest goes.
    pub(super) fn insert(&mut self, mut tokens: Vec<u32>, cache: KvCache, bytes: u64) {
        if self.max_entries == 0 || cache.is_empty() {
            return;
        }
        tokens.truncate(cache.len());
        let mut freed = 0;
        self.entries.retain(|e| {
            let covered = e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens);
            if covered {
                freed += e.bytes;
            }
            !covered
        });
        self.bytes -= freed;
        self.entries.push(Entry { tokens, cache, bytes });
        self.bytes += bytes;
        while self.entries.len() > self.max_entries {
            self.evict_oldest();
        }
    }

    /// Drops the least recently used entry; returns whether there was one.
    pub(super) fn evict_oldest(&mut self) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let e = self.entries.remove(0);
        self.bytes -= e.bytes;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(len: usize) -> KvCache {
        KvCache::with_len(Box::new(()), len)
    }

    #[test]
    fn the_longest_common_prefix_wins_and_leaves_the_last_token() {
        let mut p = PrefixCache::new(4);
        p.insert(vec![1, 2, 3], cache(3), 30);
        p.insert(vec![1, 2, 9, 9, 9], cache(5), 50);
        assert_eq!(p.lookup(&[1, 2, 9, 9, 7]).map(|(_, n)| n), Some(4));
        // The same prompt again: all but its last token.
        assert_eq!(p.lookup(&[1, 2, 3]).map(|(_, n)| n), Some(2));
        assert!(p.lookup(&[5, 1, 2]).is_none());
        assert!(
            p.lookup(&[1]).is_none(),
            "a one-token prompt has nothing to reuse"
        );
    }

    #[test]
    fn only_cached_positions_are_offered() {
        let mut p = PrefixCache::new(4);
        // Five tokens, four positions cached (the last generated token was never fed back).
        p.insert(vec![1, 2, 3, 4, 5], cache(4), 40);
        assert_eq!(p.lookup(&[1, 2, 3, 4, 5, 6]).map(|(_, n)| n), Some(4));
    }

    #[test]
    fn extensions_replace_entries_and_the_oldest_is_evicted() {
        let mut p = PrefixCache::new(2);
        p.insert(vec![1, 2], cache(2), 20);
        p.insert(vec![1, 2, 3], cache(3), 30);
        assert_eq!(p.bytes(), 30, "the extended entry replaced its prefix");
        p.insert(vec![7, 8], cache(2), 20);
        p.insert(vec![9, 9], cache(2), 20);
        assert_eq!(p.bytes(), 40, "two entries at most");
        assert!(p.lookup(&[1, 2, 3, 4]).is_none(), "the oldest went first");
        assert!(p.evict_oldest() && p.evict_oldest() && !p.evict_oldest());
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn a_disabled_cache_keeps_nothing() {
        let mut p = PrefixCache::new(0);
        p.insert(vec![1, 2, 3], cache(3), 30);
        assert_eq!(p.bytes(), 0);
        assert!(p.lookup(&[1, 2, 3, 4]).is_none());
    }
}
