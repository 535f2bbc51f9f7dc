//! Errors of textual-inversion training (`crate::train`).

use super::{DeviceError, PhotoError, SchedulerError, TokenizerError};

/// Errors of textual-inversion training. Every message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "the initializer word `{word}` is {} token(s) ({tokens:?}) for this tokenizer, but it must be exactly one. Pick a single common word close to the concept, e.g. \"cat\", \"dog\", \"person\", \"sculpture\", \"painting\".",
        .tokens.len()
    )]
    InitializerNotOneToken { word: String, tokens: Vec<String> },
    #[error("the number of vectors must be at least 1 (got {0})")]
    NoVectors(usize),
    #[error("the placeholder token must not be empty or contain whitespace (got `{0}`); use something like `<my-cat>`")]
    BadPlaceholder(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the tokenizer has {tokenizer} tokens but the text encoder {encoder} rows; the model folder is inconsistent")]
    InconsistentModel { tokenizer: usize, encoder: usize },
    #[error("the model's scheduler config has prediction_type `{0}`; training supports epsilon and v_prediction")]
    UnsupportedPrediction(String),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("invalid training batch: {0}")]
    Batch(String),
    #[error("invalid optimizer state: {0}")]
    State(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Photo(#[from] PhotoError),
    #[error(
        "training diverged ({reason}) and did not recover after {rollbacks} roll-backs with halved learning rates; the last good checkpoint (step {step}) was kept: lower the learning rate or check the photos"
    )]
    Diverged { reason: String, step: u64, rollbacks: u32 },
}
