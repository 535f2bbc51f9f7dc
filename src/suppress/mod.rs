//! SuppressEOT (Li et al., "Get What You Want, Not What You Don't", ICLR 2024), ported from the
//! authors' reference implementation for generated images: soft-weighted regularisation of the
//! prompt embedding ([`swr`]), per-token attention maps aggregated on the device ([`maps`]),
//! masks from the original branch's maps ([`masks`]), inference-time text-embedding
//! optimisation ([`ito`]) and the two-branch generation that uses them ([`pipeline`]). The same
//! maps, over all heads and steps, are the user's per-token heatmaps ([`heatmaps`], drawn by
//! [`overlay`]). Real photos are inverted first ([`inversion`], [`real_image`]).
//!
//! Numerics follow `tests/fixtures/README.md` ("SuppressEOT"). Host-side math (SVD, masks) is
//! f64 after one asynchronous readback; everything in the denoising loop stays on the device,
//! so the same code runs in the browser (WebGPU) and natively.

pub mod inversion;
pub mod ito;
pub mod masks;
pub mod pipeline;
pub mod real_image;
pub mod swr;

pub use inversion::{InversionParams, NullText, ddim_invert, ddim_next_step, ddim_scheduler, encode_image, null_text_loss_and_grad, null_text_optimization};
pub use ito::{ItoLoss, ItoTarget, LossWeights, ito_step_scale};
pub use crate::attention_maps::{AttentionMaps, HeatmapAccumulator, Heads, MapLayers, TokenHeatmaps, aggregate_maps, aggregate_maps_heads, capture_maps};
pub(crate) use crate::readback::read_f32;
pub use masks::token_masks;
pub use pipeline::{SuppressGenerated, SuppressParams, SuppressTxt2Img, generate_suppressed};
pub use crate::photos::photo_tensor;
pub use real_image::{InvertedPhoto, PhotoEdit, edit_photo, invert_photo};
pub use swr::{SuppressTokens, locate_words, soft_weighted_regularization, swr_host};

use crate::error::DeviceError;

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
