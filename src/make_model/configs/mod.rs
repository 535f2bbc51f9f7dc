//! The configuration files of the public repositories, one file per purpose, as
//! `serde_json::json!` values (written pretty-printed with sorted keys, as diffusers writes them).
//! Sources: runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1,
//! stabilityai/stable-diffusion-2-1-base, stabilityai/sd-turbo, nota-ai/bk-sdm-small,
//! nota-ai/bk-sdm-tiny.

pub mod pipeline;
pub mod scheduler;
pub mod text_encoder;
pub mod tokenizer;
pub mod unet;
pub mod vae;
