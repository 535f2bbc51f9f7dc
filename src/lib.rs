//! pseudoword: Stable Diffusion personalization (textual inversion, SuppressEOT) that runs on
//! the user's GPU, in the browser (burn + WebGPU, wasm) and natively (wgpu or CPU).
//!
//! Layout (see README): [`tokenizer`] CLIP BPE; [`weights`] streamed safetensors loading;
//! [`models`] diffusers/transformers modules; [`pipeline`] prompt encoding; [`embedding_files`]
//! textual-inversion files; [`native`] CLI-side helpers; `web` the wasm-bindgen surface.

pub mod attention_maps;
pub mod embedding_files;
pub mod jobs;
pub mod error;
pub mod kernels;
pub mod loader;
pub mod models;
pub mod photos;
pub mod pipeline;
pub mod prediction_type;
pub mod readback;
pub mod schedulers;
pub mod serde_str;
pub mod suppress;
pub mod tokenizer;
pub mod train;
pub mod weights;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod make_model;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
