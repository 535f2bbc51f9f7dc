//! Added / special tokens, ported from tokenizers' `AddedVocabulary`: tokens that are split out
//! of the text before BPE. Non-normalised tokens are matched on the raw text, normalised ones on
//! the normalised text (their pattern is the normalised content); matching is leftmost-longest,
//! anywhere in the text, honouring `single_word`, `lstrip` and `rstrip`.

use std::collections::HashMap;

use regex::Regex;

/// One added token and its matching flags (tokenizers' `AddedToken`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedToken {
    /// The token string (also its key in the vocabulary).
    pub content: String,
    /// Only match when not glued to word characters on either side.
    pub single_word: bool,
    /// Also swallow whitespace on the left of a match.
    pub lstrip: bool,
    /// Also swallow whitespace on the right of a match.
    pub rstrip: bool,
    /// Match against the normalised (NFC + whitespace + lowercase) text instead of the raw text.
    pub normalized: bool,
    /// Special token (bos/eos/unk/pad, `special: true` entries of `added_tokens_decoder`).
    pub special: bool,
}

impl AddedToken {
    /// A token with tokenizers' defaults: special tokens are not normalised, others are.
    pub fn new(content: impl Into<String>, special: bool) -> Self {
        Self {
            content: content.into(),
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: !special,
            special,
        }
    }
}

/// A set of patterns matched leftmost-longest (what tokenizers builds with aho-corasick).
#[derive(Clone, Debug, Default)]
pub(crate) struct MatchSet {
    /// First char of a pattern -> (pattern, token id, token index), longest pattern first.
    by_first: HashMap<char, Vec<(String, u32, usize)>>,
}

impl MatchSet {
    /// Adds a pattern for token `index` (into the token list given to `find`) with `id`.
    pub(crate) fn insert(&mut self, pattern: String, id: u32, index: usize) {
        let Some(first) = pattern.chars().next() else {
            return;
        };
        let list = self.by_first.entry(first).or_default();
        // Keep the first registration of an identical pattern (aho-corasick reports the lowest
        // pattern index among equal matches).
        if list.iter().any(|(p, _, _)| *p == pattern) {
            return;
        }
        list.push((pattern, id, index));
        list.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
    }

    fn is_empty(&self) -> bool {
        self.by_first.is_empty()
    }

    /// Leftmost-longest, non-overlapping matches: (start, end, id, token index).
    fn raw_matches(&self, text: &str) -> Vec<(usize, usize, u32, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let c = rest
                .chars()
                .next()
                .expect("pos is a char boundary below len");
            let hit = self
                .by_first
                .get(&c)
                .and_then(|cands| cands.iter().find(|(p, _, _)| rest.starts_with(p.as_str())));
            match hit {
                Some((p, id, index)) => {
                    out.push((pos, pos + p.len(), *id, *index));
                    pos += p.len();
                }
                None => pos += c.len_utf8(),
            }
        }
        out
    }
}

/// Regexes used by the single_word / lstrip / rstrip rules (same as tokenizers).
#[derive(Clone, Debug)]
pub(crate) struct StripRules {
    ends_with_word: Regex,
    starts_with_word: Regex,
    trailing_space: Regex,
    leading_space: Regex,
}

impl StripRules {
    pub(crate) fn new() -> Self {
        let re = |p: &str| Regex::new(p).expect("static regex compiles");
        Self {
            ends_with_word: re(r"\w$"),
            starts_with_word: re(r"^\w"),
            trailing_space: re(r"\s*$"),
            leading_space: re(r"^\s*"),
        }
    }
}

/// A piece of the input after splitting out added tokens.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Plain text still to be tokenised.
    Text(&'a str),
    /// An added token: id and the matched text (what tokenizers reports as the token string).
    Token(u32, &'a str),
}

/// Splits `text` on the matches of `set` (tokenizers' `AddedVocabulary::find_matches`).
/// `tokens` is indexed by the token index stored in `set`.
pub(crate) fn split<'a>(
    text: &'a str,
    set: &MatchSet,
    tokens: &[AddedToken],
    rules: &StripRules,
) -> Vec<Piece<'a>> {
    if set.is_empty() {
        return vec![Piece::Text(text)];
    }
    let mut pieces = Vec::new();
    let mut offset = 0;
    for (mut start, mut stop, id, index) in set.raw_matches(text) {
        let token = &tokens[index];
        if token.single_word {
            let start_ok = start == 0 || !rules.ends_with_word.is_match(&text[..start]);
            let stop_ok = stop == text.len() || !rules.starts_with_word.is_match(&text[stop..]);
            if !start_ok || !stop_ok {
                continue;
            }
        }
        if token.lstrip {
            let new_start = rules
                .trailing_space
                .find(&text[..start])
                .map_or(start, |m| m.start());
            start = new_start.max(offset);
        }
        if token.rstrip {
            stop += rules
                .leading_space
                .find(&text[stop..])
                .map_or(0, |m| m.end());
        }
        if offset < start {
            pieces.push(Piece::Text(&text[offset..start]));
        }
        pieces.push(Piece::Token(id, &text[start..stop]));
        offset = stop;
    }
    if offset < text.len() {
        pieces.push(Piece::Text(&text[offset..]));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftmost_longest_anywhere() {
        let tokens = vec![
            AddedToken::new("<c>", false),
            AddedToken::new("<c>_1", false),
        ];
        let mut set = MatchSet::default();
        set.insert("<c>".into(), 10, 0);
        set.insert("<c>_1".into(), 11, 1);
        let rules = StripRules::new();
        let got = split("x<c>_1y<c>", &set, &tokens, &rules);
        assert_eq!(
            got,
            [
                Piece::Text("x"),
                Piece::Token(11, "<c>_1"),
                Piece::Text("y"),
                Piece::Token(10, "<c>")
            ]
        );
    }

    #[test]
    fn single_word_and_strip() {
        let mut t = AddedToken::new("<m>", false);
        t.single_word = true;
        t.lstrip = true;
        t.rstrip = true;
        let tokens = vec![t];
        let mut set = MatchSet::default();
        set.insert("<m>".into(), 5, 0);
        let rules = StripRules::new();
        let got = split("a<m> hi <m> x", &set, &tokens, &rules);
        assert_eq!(
            got,
            [
                Piece::Text("a<m> hi"),
                Piece::Token(5, " <m> "),
                Piece::Text("x")
            ]
        );
    }
}
