//! Typed errors of the CLIP tokenizer (the failure cases of transformers'
//! `CLIPTokenizer.from_pretrained` / tokenizers' `BPE::from_file`, plus the
//! `TokenExists` refusal of diffusers' `load_textual_inversion`).

/// Everything that can go wrong while loading a CLIP tokenizer or adding tokens to it.
///
/// Every message names the file (or token) involved, what is wrong with it and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required file of the tokenizer folder does not exist.
    #[error(
        "tokenizer file {path} not found; a CLIP tokenizer folder must contain vocab.json and merges.txt \
         (tokenizer_config.json and special_tokens_map.json are optional)"
    )]
    MissingFile {
        /// The path that was looked up.
        path: String,
    },

    /// A tokenizer file exists but could not be read.
    #[error("could not read tokenizer file {path}: {source}")]
    Io {
        /// The path that was read.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file is not valid JSON or does not have the expected shape.
    #[error("{file} is not valid for a CLIP tokenizer: {source} (expected {expected})")]
    Json {
        /// Which file (`vocab.json`, `tokenizer_config.json`, `special_tokens_map.json`).
        file: &'static str,
        /// What the file should contain.
        expected: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// A field of a JSON config file has an unusable value.
    #[error("{file}: field `{field}` is invalid: {reason}")]
    InvalidConfig {
        /// Which file.
        file: &'static str,
        /// Which field (for `added_tokens_decoder` entries, the entry key).
        field: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A line of `merges.txt` is not two space-separated tokens.
    #[error(
        "merges.txt line {line}: expected two tokens separated by one space (e.g. `t h`), got {content:?}; \
         the file may be truncated or not a BPE merges file"
    )]
    BadMerge {
        /// 1-based line number in the file (the `#version` header is line 1).
        line: usize,
        /// The offending line.
        content: String,
    },

    /// A merge refers to a token (or produces a token) that `vocab.json` lacks.
    #[error(
        "merges.txt line {line}: token {token:?} is not in vocab.json; vocab.json and merges.txt do not belong \
         to the same tokenizer"
    )]
    MergeOutOfVocab {
        /// 1-based line number in the file.
        line: usize,
        /// The missing token (one side of the merge, or their concatenation).
        token: String,
    },

    /// The bos/eos/unk/pad token named by the config is neither in `vocab.json` nor in
    /// `added_tokens_decoder`.
    #[error(
        "{role} token {token:?} (from tokenizer_config.json / special_tokens_map.json, or the CLIP default) \
         is not in vocab.json nor in added_tokens_decoder; fix the config or use the matching vocab.json"
    )]
    SpecialTokenNotInVocab {
        /// `bos`, `eos`, `unk` or `pad`.
        role: &'static str,
        /// The token string.
        token: String,
    },

    /// `add_tokens` was asked to add a token that already exists (diffusers refuses this too).
    #[error(
        "token {token:?} already exists in the tokenizer (id {id}); pick a placeholder token that is not \
         in the vocabulary"
    )]
    TokenExists {
        /// The token string.
        token: String,
        /// Its existing id.
        id: u32,
    },

    /// `add_tokens` was given the same new token twice.
    #[error("token {token:?} is listed twice in one add_tokens call; list each new token once")]
    DuplicateToken {
        /// The token string.
        token: String,
    },

    /// `add_tokens` was given an empty string.
    #[error("cannot add an empty token; give the placeholder token a non-empty name")]
    EmptyToken,
}
