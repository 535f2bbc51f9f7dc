//! Errors of SuppressEOT (`crate::suppress`). Every message says what to change.

use super::DeviceError;

/// Errors of SuppressEOT. Every message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    #[error("nothing to suppress: give one or more words of the prompt (comma-separated groups, e.g. \"glasses\" or \"glasses, hat\")")]
    NoWords,
    #[error(
        "the word(s) `{word}` to suppress are not in the prompt: `{word}` tokenizes to {word_tokens:?} but the prompt (as the text encoder sees it, at most 75 tokens) tokenizes to {prompt_tokens:?}. SuppressEOT removes something the prompt names: use words that appear in the prompt, spelled as there."
    )]
    WordNotInPrompt { word: String, word_tokens: Vec<String>, prompt_tokens: Vec<String> },
    #[error("per-step unconditional embeddings (null-text inversion) need classifier-free guidance: set the guidance above 1 (7.5 is the reference's)")]
    UncondNeedsGuidance,
    #[error("{given} unconditional embeddings for {steps} steps: invert the photo with the same number of steps")]
    UncondSteps { given: usize, steps: usize },
    #[error("unconditional embeddings must have shape {expected:?}, got {actual:?}")]
    UncondShape { expected: Vec<usize>, actual: Vec<usize> },
    #[error("{scheduler} cannot continue from saved latents (it keeps state between steps); use DDIM or Euler")]
    CannotResume { scheduler: String },
    #[error("{done} steps done, but the run has {total}")]
    ResumeStep { done: usize, total: usize },
    #[error("a photo edit {0}")]
    Edit(&'static str),
    #[error(transparent)]
    Device(#[from] DeviceError),
}
