//! Text normalisation and pre-tokenisation of transformers' `CLIPTokenizer` (tokenizers backend):
//! the normalizer `Sequence[NFC, Replace(\s+ -> " "), Lowercase]`, the pre-tokenizer
//! `Split(<clip pattern>, removed, invert)` followed by GPT-2 `ByteLevel`, and the GPT-2
//! `bytes_to_unicode` table.

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// The CLIP pre-tokenisation pattern (only its matches are kept; whitespace disappears).
pub(crate) const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Normalizer + pre-tokenizer state (compiled regexes and the byte-level table).
#[derive(Clone, Debug)]
pub(crate) struct TextPipeline {
    whitespace: Regex,
    pieces: Regex,
    lowercase: bool,
    /// `bytes_to_unicode()[b]` as a one-character string, for every byte.
    byte_chars: Vec<String>,
}

impl TextPipeline {
    /// Builds the pipeline; `lowercase` is the config's `do_lower_case`.
    pub(crate) fn new(lowercase: bool) -> Self {
        let whitespace = Regex::new(r"\s+").expect("static whitespace regex compiles");
        let pieces = Regex::new(CLIP_PATTERN).expect("static CLIP regex compiles");
        let byte_chars = bytes_to_unicode().iter().map(|c| c.to_string()).collect();
        Self {
            whitespace,
            pieces,
            lowercase,
            byte_chars,
        }
    }

    /// NFC, every Unicode whitespace run (Unicode `White_Space`, like Oniguruma's `\s`) to one
    /// space, then per-character lowercase (`char::to_lowercase`, as tokenizers' `Lowercase`
    /// does: no final-sigma rule).
    pub(crate) fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        if self.lowercase {
            spaced.chars().flat_map(char::to_lowercase).collect()
        } else {
            spaced.into_owned()
        }
    }

    /// Splits normalised text into pre-tokens (the regex matches) and byte-level encodes each one.
    ///
    /// GPT-2's ByteLevel regex, which tokenizers applies after the CLIP split, never splits a
    /// CLIP piece further (pieces hold no whitespace and are a single class run or a contraction),
    /// so it is not run.
    pub(crate) fn pre_tokenize<'a>(
        &'a self,
        normalized: &'a str,
    ) -> impl Iterator<Item = String> + 'a {
        self.pieces.find_iter(normalized).map(move |m| {
            let mut out = String::with_capacity(m.as_str().len() * 2);
            for b in m.as_str().bytes() {
                out.push_str(&self.byte_chars[b as usize]);
            }
            out
        })
    }
}

/// GPT-2 `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100.. in byte order. Index = byte value.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let cp = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(cp).expect("code points below 0x200 are valid");
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[0xAD], '\u{143}');
    }

    #[test]
    fn normalizes_whitespace_and_case() {
        let p = TextPipeline::new(true);
        assert_eq!(p.normalize("  A\t\tB\r\nC "), " a b c ");
        let pieces: Vec<String> = p.pre_tokenize(" don't ").collect();
        assert_eq!(pieces, ["don", "'t"]);
    }
}
