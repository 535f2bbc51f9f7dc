//! pseudoword: Stable Diffusion personalization (textual inversion, SuppressEOT) that runs on
//! the user's GPU, in the browser (burn + WebGPU, wasm) and natively (wgpu or CPU).
//!
//! Layout (see README and docs/ARCHITECTURE.md; each layer uses only those below it):
//! [`error`] every typed error; [`tokenizer`], [`weights`], [`models`], [`schedulers`],
//! [`prediction_type`] the foundation; [`attention_maps`], [`photos`], [`readback`],
//! [`embedding_files`] shared parts; [`pipeline`] the model and THE denoising loop
//! ([`pipeline::denoise`]); [`suppress`] and [`train`] the algorithms; [`loader`] THE model
//! loader; [`jobs`] one settings type per job and the runs both front ends drive; front ends:
//! `native` + the CLI, `web` (wasm-bindgen), `bench`, `make_model`.

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
