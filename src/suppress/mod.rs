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

pub mod heatmaps;
pub mod inversion;
pub mod ito;
pub mod maps;
pub mod masks;
pub mod overlay;
pub mod pipeline;
pub mod real_image;
pub mod swr;

use burn::tensor::Tensor;

pub use inversion::{InversionParams, NullText, ddim_invert, ddim_next_step, ddim_scheduler, encode_image, null_text_loss_and_grad, null_text_optimization};
pub use ito::{ItoLoss, ItoTarget, LossWeights, ito_step_scale};
pub use heatmaps::{HeatmapAccumulator, TokenHeatmaps};
pub use maps::{AttentionMaps, Heads, MapLayers, aggregate_maps, aggregate_maps_heads, capture_maps};
pub use masks::token_masks;
pub use pipeline::{SuppressGenerated, SuppressParams, SuppressTxt2Img, generate_suppressed};
pub use real_image::{InvertedPhoto, PhotoEdit, edit_photo, invert_photo, photo_tensor};
pub use swr::{SuppressTokens, locate_words, soft_weighted_regularization, swr_host};

use crate::error::{DeviceError, Error};

/// Errors of SuppressEOT. Every message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    #[error("nothing to suppress: give one or more words of the prompt (comma-separated groups, e.g. \"glasses\" or \"glasses, hat\")")]
    NoWords,
    #[error(
        "the word(s) `{word}` to suppress are not in the prompt: `{word}` tokenizes to {word_tokens:?} but the prompt (as the text encoder sees it, at most 75 tokens) tokenizes to {prompt_tokens:?}. SuppressEOT removes something the prompt names: use words that appear in the prompt, spelled as there."
    )]
    WordNotInPrompt { word: String, word_tokens: Vec<String>, prompt_tokens: Vec<String> },
    #[error("invalid suppression setting: {0}")]
    InvalidParams(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl From<SuppressError> for Error {
    fn from(e: SuppressError) -> Self {
        match e {
            SuppressError::Device(e) => Error::Device(e),
            other => Error::Input(other.to_string()),
        }
    }
}

/// Reads a tensor back to the host as f32 values (asynchronously: works on WebGPU too).
pub(crate) async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, DeviceError> {
    let data = t.into_data_async().await.map_err(|e| DeviceError::Readback { reason: format!("{e:?}") })?;
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| DeviceError::Readback { reason: format!("{e:?}") })
}
