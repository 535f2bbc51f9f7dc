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
pub use pipeline::{SuppressParams, SuppressTxt2Img};
pub use crate::photos::photo_tensor;
pub use real_image::{InvertedPhoto, invert_photo};
pub use swr::{SuppressTokens, locate_words, soft_weighted_regularization, swr_host};

pub use crate::error::SuppressError;
