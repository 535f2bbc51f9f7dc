//! What runs between user input and the models: prompt encoding (tokenizer + text encoder +
//! textual-inversion tokens), text-to-image generation, image output. Training and suppression
//! build on it.

pub mod png_out;
mod prompt;
pub mod rng;
// txt2img + stable_diffusion are wired in once UNet, VAE and schedulers land.

pub use prompt::{PromptEncoder, Tokenized};
