//! Incremental detokenization and stop strings: text is released only when it is complete UTF-8
//! and cannot be the start of a stop string.

use super::TextCodec;

/// Turns a token stream into text deltas. Decodes a small window so that tokenizers whose pieces
/// depend on their neighbours (leading spaces, byte fallback) come out right.
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// Adds a token; returns the newly completed text (maybe empty).
    pub fn push(&mut self, codec: &dyn TextCodec, id: u32) -> String {
        self.ids.push(id);
        let prefix = codec
            .decode(&self.ids[self.prefix_offset..self.read_offset])
            .unwrap_or_default();
        let full = codec.decode(&self.ids[self.prefix_offset..]).unwrap_or_default();
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && let Some(new) = full.get(prefix.len()..)
        {
            let new = new.to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return new;
        }
        String::new()
    }

    /// The text still held back (an incomplete character at the end), at the end of generation.
    pub fn flush(&mut self, codec: &dyn TextCodec) -> String {
        let prefix = codec
            .decode(&self.ids[self.prefix_offset..self.read_offset])
            .unwrap_or_default();
        let full = codec.decode(&self.ids[self.prefix_offset..]).unwrap_or_default();
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        full.get(prefix.len()..).unwrap_or_default().to_string()
    }
}

/// Cuts text at the first stop string and holds back what could be one's beginning.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            pending: String::new(),
        }
    }

    /// Adds text; returns what may be released and whether a stop string matched (the stop string
    /// and everything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return (out, true);
        }
        let hold = self
            .stops
            .iter()
            .map(|s| {
                s.char_indices()
                    .map(|(k, _)| k)
                    .skip(1)
                    .filter(|&k| self.pending.ends_with(&s[..k]))
                    .max()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// What is held back, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::ByteCodec;

    #[test]
    fn utf8_is_emitted_whole() {
        let c = ByteCodec::default();
        let mut d = Detokenizer::default();
        let bytes = "é!".as_bytes();
        assert_eq!(d.push(&c, bytes[0] as u32), "");
        assert_eq!(d.push(&c, bytes[1] as u32), "é");
        assert_eq!(d.push(&c, bytes[2] as u32), "!");
        assert_eq!(d.flush(&c), "");
    }

    #[test]
    fn stop_strings_across_pieces() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abE"), ("ab".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("Dxyz"), ("".into(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.push("o"), ("ENo".into(), false));
    }

    proptest! {
        #[test]
        fn detok_concatenation_equals_decode(text in ".{0,40}") {
            let c = ByteCodec::default();
            let mut d = Detokenizer::default();
            let mut out = String::new();
            for b in text.bytes() {
                out.push_str(&d.push(&c, b as u32));
            }
            out.push_str(&d.flush(&c));
            prop_assert_eq!(out, text);
        }

        #[test]
        fn stop_matcher_output_is_prefix_before_stop(pieces in prop::collection::vec(".{0,5}", 0..10), stop in ".{1,3}") {
            let mut m = StopMatcher::new(vec![stop.clone()]);
            let mut out = String::new();
            let mut stopped = false;
            for p in &pieces {
                let (o, s) = m.push(p);
                out.push_str(&o);
                if s { stopped = true; break; }
            }
            if !stopped { out.push_str(&m.flush()); }
            let all: String = pieces.concat();
            match all.find(&stop) {
                Some(pos) => prop_assert_eq!(&out, &all[..pos]),
                None => prop_assert_eq!(&out, &all),
            }
        }
    }
}
