//! A prompt tokenized as `StableDiffusionPipeline.encode_prompt` does: textual-inversion
//! multi-vector tokens expanded (`maybe_convert_prompt`), then padded / truncated to 77 ids.

use super::ClipTokenizer;

/// A tokenized prompt.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Tokenized {
    /// The prompt after `maybe_convert_prompt`.
    pub converted_prompt: String,
    /// `model_max_length` ids fed to the text encoder (BOS + at most 75 tokens + EOS, padded).
    pub input_ids: Vec<u32>,
    /// Token strings of `input_ids`.
    pub tokens: Vec<String>,
    /// All ids without truncation or padding.
    pub ids: Vec<u32>,
    /// True when the prompt had more tokens than fit (they are dropped, as diffusers does).
    pub truncated: bool,
}

impl Tokenized {
    /// Tokenizes like the pipeline: convert the prompt for multi-vector tokens, then pad/truncate.
    pub fn new(tokenizer: &ClipTokenizer, prompt: &str) -> Self {
        let converted_prompt = tokenizer.maybe_convert_prompt(prompt);
        let full = tokenizer.encode(&converted_prompt);
        let padded = tokenizer.encode_padded(&converted_prompt);
        let truncated = full.ids.len() > tokenizer.model_max_length();
        Tokenized { converted_prompt, input_ids: padded.ids, tokens: padded.tokens, ids: full.ids, truncated }
    }
}

