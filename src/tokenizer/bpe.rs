//! The BPE model of tokenizers (`models::bpe::BPE` with `end_of_word_suffix = "</w>"`,
//! `continuing_subword_prefix = ""`, `fuse_unk = false`, no dropout), as configured by
//! transformers' `CLIPTokenizer`: vocab.json + merges.txt loading and merge-by-rank encoding.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::error::TokenizerError;

/// Suffix appended to the last symbol of every pre-token.
pub(crate) const END_OF_WORD: &str = "</w>";

/// Vocabulary and merge table.
#[derive(Clone, Debug)]
pub(crate) struct Bpe {
    pub(crate) vocab: HashMap<String, u32>,
    pub(crate) vocab_r: HashMap<u32, String>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id used for a character missing from the vocab (tokenizers' `unk_token`).
    unk_id: Option<u32>,
}

/// One live or dead symbol of a word being merged (a doubly linked list in a `Vec`).
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

const NONE: usize = usize::MAX;

impl Bpe {
    /// Parses `vocab.json` (an object token -> id) and `merges.txt`.
    pub(crate) fn from_strings(vocab_json: &str, merges_txt: &str) -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> =
            serde_json::from_str(vocab_json).map_err(|source| TokenizerError::Json {
                file: "vocab.json",
                expected: "a JSON object mapping token strings to integer ids",
                source,
            })?;
        let vocab_r = vocab.iter().map(|(k, v)| (*v, k.clone())).collect();
        let mut merges = HashMap::with_capacity(vocab.len());
        let mut rank = 0u32;
        for (index, raw) in merges_txt.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim_end_matches('\r');
            if (index == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokenizerError::BadMerge {
                    line: line_no,
                    content: line.to_string(),
                });
            };
            if a.is_empty() || b.is_empty() {
                return Err(TokenizerError::BadMerge {
                    line: line_no,
                    content: line.to_string(),
                });
            }
            let lookup = |t: &str| {
                vocab
                    .get(t)
                    .copied()
                    .ok_or_else(|| TokenizerError::MergeOutOfVocab {
                        line: line_no,
                        token: t.to_string(),
                    })
            };
            let a_id = lookup(a)?;
            let b_id = lookup(b)?;
            let merged = format!("{a}{b}");
            let new_id = lookup(&merged)?;
            merges.insert((a_id, b_id), (rank, new_id));
            rank += 1;
        }
        Ok(Self {
            vocab,
            vocab_r,
            merges,
            unk_id: None,
        })
    }

    /// Sets the id used for characters that are not in the vocab.
    pub(crate) fn set_unk(&mut self, unk_id: Option<u32>) {
        self.unk_id = unk_id;
    }

    /// Encodes one byte-level pre-token; pushes `(id, token string)` pairs.
    ///
    /// Merges are applied lowest rank first, leftmost first among equal ranks (a heap of
    /// candidate pairs, stale entries skipped), which gives the same result as the reference
    /// "merge every occurrence of the best pair" loop in O(n log n).
    pub(crate) fn encode_word(&self, word: &str, out: &mut Vec<(u32, String)>) {
        let char_count = word.chars().count();
        let mut symbols: Vec<Symbol> = Vec::with_capacity(char_count);
        let mut buf = String::new();
        for (i, c) in word.chars().enumerate() {
            buf.clear();
            buf.push(c);
            if i + 1 == char_count {
                buf.push_str(END_OF_WORD);
            }
            let id = match self.vocab.get(buf.as_str()) {
                Some(&id) => id,
                None => match self.unk_id {
                    Some(unk) => unk,
                    None => continue,
                },
            };
            let pos = symbols.len();
            symbols.push(Symbol {
                id,
                prev: pos.wrapping_sub(1),
                next: pos + 1,
                alive: true,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }
        if let Some(first) = symbols.first_mut() {
            first.prev = NONE;
        }

        let mut heap: BinaryHeap<Reverse<(u32, usize, u32)>> =
            BinaryHeap::with_capacity(symbols.len());
        for pos in 0..symbols.len().saturating_sub(1) {
            if let Some(&(rank, new_id)) = self.merges.get(&(symbols[pos].id, symbols[pos + 1].id))
            {
                heap.push(Reverse((rank, pos, new_id)));
            }
        }
        while let Some(Reverse((_, pos, new_id))) = heap.pop() {
            let left = symbols[pos];
            if !left.alive || left.next == NONE {
                continue;
            }
            let right_pos = left.next;
            // Skip entries made stale by an earlier merge of either side.
            match self.merges.get(&(left.id, symbols[right_pos].id)) {
                Some(&(_, id)) if id == new_id => {}
                _ => continue,
            }
            let after = symbols[right_pos].next;
            symbols[right_pos].alive = false;
            symbols[pos].id = new_id;
            symbols[pos].next = after;
            if after != NONE {
                symbols[after].prev = pos;
            }
            if left.prev != NONE
                && let Some(&(rank, id)) = self.merges.get(&(symbols[left.prev].id, new_id))
            {
                heap.push(Reverse((rank, left.prev, id)));
            }
            if after != NONE
                && let Some(&(rank, id)) = self.merges.get(&(new_id, symbols[after].id))
            {
                heap.push(Reverse((rank, pos, id)));
            }
        }
        out.extend(symbols.iter().filter(|s| s.alive).map(|s| {
            let token = self.vocab_r.get(&s.id).cloned().unwrap_or_default();
            (s.id, token)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Bpe {
        let vocab = r#"{"a":0,"b":1,"c":2,"a</w>":3,"b</w>":4,"c</w>":5,"ab":6,"abc</w>":7,"bc</w>":8,"aa":9,"aa</w>":10}"#;
        let merges = "#version: 0.2\na b\nab c</w>\nb c</w>\na a\na a</w>\n";
        Bpe::from_strings(vocab, merges).unwrap()
    }

    fn enc(bpe: &Bpe, w: &str) -> Vec<String> {
        let mut out = Vec::new();
        bpe.encode_word(w, &mut out);
        out.into_iter().map(|(_, t)| t).collect()
    }

    #[test]
    fn merges_by_rank() {
        let bpe = tiny();
        assert_eq!(enc(&bpe, "abc"), ["abc</w>"]);
        assert_eq!(enc(&bpe, "bc"), ["bc</w>"]);
        assert_eq!(enc(&bpe, "aaa"), ["aa", "a</w>"]);
        assert_eq!(enc(&bpe, "aaaa"), ["aa", "aa</w>"]);
    }

    #[test]
    fn bad_merge_line_is_reported() {
        let err = Bpe::from_strings(r#"{"a":0}"#, "#version: 0.2\na\n").unwrap_err();
        assert!(
            matches!(err, TokenizerError::BadMerge { line: 2, .. }),
            "{err}"
        );
    }
}
