//! Prompt encoding as `StableDiffusionPipeline.encode_prompt` does it: `maybe_convert_prompt`
//! (multi-vector textual inversion), tokenize padded/truncated to 77, text encoder.

use burn::tensor::{Tensor, TensorData};

use crate::embedding_files::TextualInversion;
use crate::error::{EmbeddingError, Error};
use crate::models::{CLIPTextModel, CLIPTextOutput};
use crate::tokenizer::{ClipTokenizer, TokenizerError};

/// Tokenizer and text encoder of one model, kept in step (added tokens = added rows).
#[derive(Clone)]
pub struct PromptEncoder {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: CLIPTextModel,
}
pub use crate::tokenizer::Tokenized;

impl PromptEncoder {
    pub fn new(tokenizer: ClipTokenizer, text_encoder: CLIPTextModel) -> Self {
        Self { tokenizer, text_encoder }
    }

    /// Registers a textual-inversion embedding: its tokens in the tokenizer and its rows in the
    /// token-embedding matrix. Returns the new token ids.
    pub fn add_embedding(&mut self, file: &str, emb: &TextualInversion) -> Result<Vec<u32>, EmbeddingError> {
        let width = self.text_encoder.hidden_size();
        if emb.dim != width {
            return Err(EmbeddingError::WidthMismatch { file: file.into(), file_width: emb.dim, model_width: width });
        }
        if self.tokenizer.len() != self.text_encoder.num_tokens() {
            return Err(EmbeddingError::Invalid {
                file: file.into(),
                reason: format!(
                    "the tokenizer has {} tokens but the text encoder {} rows; the model folder is inconsistent",
                    self.tokenizer.len(),
                    self.text_encoder.num_tokens()
                ),
            });
        }
        let tokens = emb.tokens();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let ids = self.tokenizer.add_tokens(&refs).map_err(|e| match e {
            TokenizerError::TokenExists { token, .. } => EmbeddingError::TokenExists { file: file.into(), token },
            other => EmbeddingError::Invalid { file: file.into(), reason: other.to_string() },
        })?;
        let rows = Tensor::<2>::from_data(TensorData::new(emb.vectors.clone(), [emb.n, emb.dim]), &self.text_encoder.device());
        self.text_encoder.add_token_rows(rows);
        Ok(ids)
    }

    /// Tokenizes like the pipeline (see [`Tokenized::new`]).
    pub fn tokenize(&self, prompt: &str) -> Tokenized {
        Tokenized::new(&self.tokenizer, prompt)
    }

    /// Encodes prompts to `last_hidden_state` `[batch, 77, hidden]` (+ pooled and, on request,
    /// every layer's hidden state).
    pub fn encode(&self, prompts: &[&str], output_hidden_states: bool) -> Result<(Vec<Tokenized>, CLIPTextOutput), Error> {
        if prompts.is_empty() {
            return Err(crate::error::InputError::setting("prompt", "is missing: give at least one prompt").into());
        }
        let toks: Vec<Tokenized> = prompts.iter().map(|p| self.tokenize(p)).collect();
        let ids: Vec<Vec<u32>> = toks.iter().map(|t| t.input_ids.clone()).collect();
        let out = self.text_encoder.forward(&ids, output_hidden_states);
        Ok((toks, out))
    }
}
